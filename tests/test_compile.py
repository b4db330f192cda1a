"""torch.compile: the whole RTD step traces as one graph, gives the eager losses and gradients, and the trainer's
`train.compile=true` trains and resumes.

`fullgraph=True` fails on any graph break, host sync or data-dependent shape in the generator, the sampling, the
discriminator or the losses. The sharing modes trace with `aot_eager` (dynamo and AOT autograd, no code generation:
quick), GDES also with inductor, the backend the trainer uses. Compiling takes tens of seconds on two cores, so the
models are the smallest that keep every part (two layers, relative attention, a narrower generator).
"""

import pytest
import torch

from debertav3 import RTDModel, generator_config, preset
from debertav3.model import implementations
from debertav3.objective.rtd import prediction_positions

SPECIALS = (0, 1, 2, 3, 99)


def tiny_model(sharing: str, attention_impl: str = "eager") -> RTDModel:
    """`attention_impl` "auto" takes every fast path of the CPU; anything else the reference for the other kinds."""
    torch.manual_seed(0)
    others = "auto" if attention_impl == "auto" else "eager"
    disc = preset("tiny", vocab_size=100, hidden_size=32, intermediate_size=64, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, attention_impl=attention_impl, mlm_loss_impl=others,
                  dropout_impl=others)
    return RTDModel(generator_config(disc, hidden_size=16), disc, sharing, special_token_ids=SPECIALS)


def static_batch(padded: bool, seed: int = 0, batch: int = 3, length: int = 24, slots: int = 6) -> dict:
    """A batch as the trainer builds it: prediction slots, uniforms and loss denominators included."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, length // 2:] = 0
        ids = ids.masked_fill(mask == 0, 0)
    selected = (torch.rand(ids.shape, generator=gen) < 0.15) & mask.bool()
    selected[:, 1] = True
    selected &= selected.cumsum(1) <= slots
    labels = ids.masked_fill(~selected, -100)
    positions = prediction_positions(labels, slots)
    return dict(input_ids=ids.masked_fill(selected, 99), attention_mask=mask, labels=labels,
                mask_positions=positions, uniforms=1.0 - torch.rand(positions.shape, generator=gen),
                denominators=torch.tensor([float(selected.sum()), float(mask.sum())]))


def losses_and_gradients(forward, model: RTDModel, batch: dict):
    model.zero_grad(set_to_none=True)
    out = forward(**batch)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {name: value.detach() for name, value in out.metric_tensors().items()}, grads


def assert_same(compiled, eager) -> None:
    (metrics, grads), (expected_metrics, expected_grads) = compiled, eager
    for name, expected in expected_metrics.items():
        assert torch.allclose(metrics[name], expected, rtol=1e-5, atol=1e-6), (name, metrics[name], expected)
    assert grads.keys() == expected_grads.keys()
    for name, expected in expected_grads.items():
        assert (grads[name] - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max().item()), name


@pytest.mark.parametrize("sharing,backend", [("es", "aot_eager"), ("nes", "aot_eager"), ("gdes", "aot_eager"),
                                             pytest.param("gdes", "inductor", marks=pytest.mark.slow)])
def test_the_whole_step_compiles_as_one_graph_with_the_eager_results(sharing, backend):
    torch._dynamo.reset()
    model = tiny_model(sharing)
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend=backend)
    for padded in (False, True):  # same shapes: the second call reuses the graph
        batch = static_batch(padded)
        assert_same(losses_and_gradients(compiled, model, batch), losses_and_gradients(model, model, batch))


@pytest.mark.parametrize("impl", [name for name in implementations.COMPILES["attention"]
                                  if name != implementations.REFERENCE])
def test_fast_paths_that_claim_compile_support_trace_as_one_graph(impl):
    torch._dynamo.reset()
    model = tiny_model("gdes", impl)
    assert model.discriminator.deberta.encoder.layer[0].attention.self.impl == impl
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager")
    batch = static_batch(padded=True, seed=1)
    assert_same(losses_and_gradients(compiled, model, batch), losses_and_gradients(model, model, batch))


def test_fast_paths_that_do_not_compile_run_their_reference_inside_the_compiled_step():
    torch._dynamo.reset()
    assert ("cpu_fused", "cpu_bits") == tuple(implementations.AUTO[kind]["cpu"] for kind in ("attention", "dropout"))
    assert not any(auto["cpu"] in implementations.COMPILES[kind]
                   for kind, auto in implementations.AUTO.items() if "cpu" in auto)
    model = tiny_model("gdes", "auto")  # every fast path of the CPU
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager")
    batch = static_batch(padded=True, seed=2)
    assert_same(losses_and_gradients(compiled, model, batch), losses_and_gradients(model, model, batch))
    with_dropout = RTDModel(model.generator.config.replace(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1),
                            model.discriminator.config.replace(hidden_dropout_prob=0.1,
                                                               attention_probs_dropout_prob=0.1),
                            special_token_ids=SPECIALS)
    assert with_dropout.discriminator.deberta.embeddings.dropout.impl == "cpu_bits"
    metrics, _ = losses_and_gradients(torch.compile(with_dropout, fullgraph=True, dynamic=False,
                                                    backend="aot_eager"), with_dropout, batch)
    assert all(torch.isfinite(value) for value in metrics.values())


@pytest.mark.slow
def test_the_trainer_trains_compiled_and_resumes_exactly(tmp_path, capsys):
    """`train.compile=true`: a run stopped after 2 steps and resumed ends with the weights and losses of a run
    that went straight through 4 (the compiled kernels are the same in both, so the results are bit for bit)."""
    from conftest import SMALL_MODEL, corpus_overrides, write_corpus
    from test_train import final_weights, scalars

    from debertav3.train import load_config
    from debertav3.train.loop import train

    corpus = write_corpus(tmp_path / "corpus", 60_000, 20_000)

    def config(output_dir):
        return load_config({"model": SMALL_MODEL, "data": {"max_seq_length": 32, "num_proc": 1},
                            "optim": {"lr": 2e-3, "warmup_steps": 2},
                            "train": {"batch_size": 4, "log_every": 1, "eval_every": 4, "eval_batches": 1,
                                      "save_every": 2, "progress": False, "compile": True}},
                           None, [*corpus_overrides(corpus), f"train.output_dir={output_dir}", "train.max_steps=4"])

    torch._dynamo.reset()
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train(config(straight))
    notices = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train.compile:")]
    assert [line.split("'")[1] for line in notices] == ["cpu_fused", "cpu_bits"]  # auto on the CPU
    train(config(interrupted), stop_after_steps=2)
    train(config(interrupted))
    a, b = final_weights(straight), final_weights(interrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = scalars(straight)["train/loss"]
    assert losses == scalars(interrupted)["train/loss"] and len(losses) == 4
    assert all(torch.isfinite(torch.tensor(list(losses.values()))))


@pytest.mark.parametrize("sharing", ["es", "gdes"])
def test_the_decoupled_stages_compile_as_one_graph_each(sharing):
    """rtd.schedule=decoupled calls the model twice a step (stage generator, then stage discriminator on its
    replacements): each stage traces whole and matches eager."""
    torch._dynamo.reset()
    model = tiny_model(sharing)
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager")
    batch = static_batch(padded=True, seed=3)
    sampled = model(**batch, stage="generator").discriminator_input_ids
    for stage, extra in (("generator", {}), ("discriminator", {"discriminator_input_ids": sampled})):
        assert_same(losses_and_gradients(lambda **b: compiled(**b, stage=stage, **extra), model, batch),
                    losses_and_gradients(lambda **b: model(**b, stage=stage, **extra), model, batch))


@pytest.mark.parametrize("objective", ["arlm", "mt"])
def test_the_causal_step_compiles_as_one_graph_with_the_eager_results(objective):
    """The auto-regressive task (objectives arlm and mt): the triangular mask in every layer and the EMD at every
    position trace whole too; mt's masked task is the MLM step above."""
    from debertav3.objective.arlm import next_token_labels

    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=100, hidden_size=32, intermediate_size=64, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, attention_impl="eager", mlm_loss_impl="eager",
                 dropout_impl="eager")
    model = RTDModel(cfg, None, objective=objective, special_token_ids=SPECIALS)
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager")
    for padded in (False, True):
        batch = static_batch(padded)
        ids, mask = batch["input_ids"].masked_fill(batch["input_ids"] == 99, 7), batch["attention_mask"]
        labels = next_token_labels(ids, mask, torch.tensor(SPECIALS))
        inputs = dict(input_ids=ids, attention_mask=mask, labels=labels, causal=True,
                      denominators=torch.tensor([float((labels != -100).sum()), float(mask.sum())]))
        assert_same(losses_and_gradients(compiled, model, inputs), losses_and_gradients(model, model, inputs))
