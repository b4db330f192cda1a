"""bf16 mixed precision on the CPU, as GPUs run it (`train.mixed_precision=bf16`: torch.autocast in bf16).

Every implementation runs under it: the reference, the CPU's fast paths together (what `auto` picks there) and
the GPU's combination (sdpa attention, the reference loss and dropout). On a fixed batch the losses come out in
fp32 and within a stated tolerance of fp32; the trainer writes a checkpoint under bf16 and a resumed run ends
with the weights of a straight one.
"""

import pytest
import torch
from accelerate.state import AcceleratorState

from conftest import SMALL_MODEL, corpus_overrides, write_corpus
from debertav3 import RTDModel, generator_config, preset
from debertav3.objective.rtd import prediction_positions
from debertav3.train import load_config
from debertav3.train.loop import train
from test_train import final_weights, scalars

# (attention, mlm_loss, dropout): between them every registered implementation
COMBINATIONS = [("eager", "eager", "eager"), ("cpu_fused", "eager", "cpu_bits"), ("sdpa", "eager", "eager")]
# bf16 keeps 8 bits of mantissa: measured on this batch, the losses move by at most 0.4% (MLM) and 1.2% (RTD)
# from fp32; the tolerance leaves twice that.
LOSS_TOLERANCE = {"mlm_loss": 0.01, "rtd_loss": 0.025}


def batch(seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 999, (4, 48), generator=gen)
    mask = torch.ones_like(ids)
    mask[3, 30:] = 0
    selected = (torch.rand(ids.shape, generator=gen) < 0.15) & mask.bool()
    labels = ids.masked_fill(~selected, -100)
    positions = prediction_positions(labels)
    uniforms = 1.0 - torch.rand(positions.shape, generator=gen)
    return ids.masked_fill(selected, 999), mask, labels, positions, uniforms


@pytest.mark.parametrize("attention,mlm_loss,dropout", COMBINATIONS)
def test_bf16_losses_are_fp32_and_close_to_fp32(attention, mlm_loss, dropout):
    torch.manual_seed(0)
    disc = preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attention_impl=attention,
                  mlm_loss_impl=mlm_loss, dropout_impl=dropout)
    model = RTDModel(generator_config(disc), disc, special_token_ids=(0, 1, 2, 3, 999))
    inputs = batch()
    full = model(*inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = model(*inputs)
    half.loss.backward()
    for name, value in half.metric_tensors().items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.equal(half.discriminator_input_ids, full.discriminator_input_ids) or \
        (half.discriminator_input_ids != full.discriminator_input_ids).sum() <= 2  # a draw at a cdf edge may flip
    for name, tolerance in LOSS_TOLERANCE.items():
        got, expected = getattr(half, name).item(), getattr(full, name).item()
        assert abs(got - expected) <= tolerance * abs(expected), (name, got, expected)


def fresh_accelerate_state() -> None:
    """accelerate keeps one precision per process (its AcceleratorState); start the next run from none, as a new
    process would, so that runs of either precision can follow each other in the test process."""
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture()
def own_accelerate_state():
    fresh_accelerate_state()
    yield
    fresh_accelerate_state()


@pytest.mark.slow
@pytest.mark.parametrize("attention,mlm_loss,dropout", COMBINATIONS)
def test_the_trainer_runs_bf16_and_resumes_exactly(attention, mlm_loss, dropout, tmp_path, own_accelerate_state):
    corpus = write_corpus(tmp_path / "corpus", 60_000, 20_000)

    def config(output_dir, precision="bf16"):
        return load_config({"model": {**SMALL_MODEL, "attention_impl": attention, "mlm_loss_impl": mlm_loss,
                                      "dropout_impl": dropout},
                            "data": {"max_seq_length": 32, "num_proc": 1}, "optim": {"lr": 2e-3, "warmup_steps": 2},
                            "train": {"batch_size": 4, "log_every": 1, "eval_every": 4, "eval_batches": 1,
                                      "save_every": 2, "progress": False, "mixed_precision": precision}},
                           None, [*corpus_overrides(corpus), f"train.output_dir={output_dir}", "train.max_steps=4"])

    straight, interrupted, fp32 = tmp_path / "straight", tmp_path / "interrupted", tmp_path / "fp32"
    logged = train(config(straight))
    fresh_accelerate_state()
    train(config(fp32, "no"))
    fresh_accelerate_state()
    first_bf16, first_fp32 = scalars(straight)["train/loss"][1], scalars(fp32)["train/loss"][1]
    assert first_bf16 != first_fp32 and abs(first_bf16 - first_fp32) < 0.01 * first_fp32  # autocast did run
    train(config(interrupted), stop_after_steps=2)
    train(config(interrupted))
    a, b = final_weights(straight), final_weights(interrupted)
    assert all(value.dtype == torch.float32 for value in a.values())  # autocast: the weights stay fp32
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = scalars(straight)["train/loss"]
    assert losses == scalars(interrupted)["train/loss"] and len(losses) == 4
    assert all(torch.isfinite(torch.tensor(list(losses.values()))))
    assert 0.0 <= logged["eval/rtd_auc"] <= 1.0
