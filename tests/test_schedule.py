"""rtd.schedule: the decoupled step against a hand-built pair of standalone steps, where it equals the joint step
and where it cannot, the generator-only warm-up, and the trainer's decoupled runs (resume, refusals)."""

import copy

import pytest
import torch
from accelerate import Accelerator

from debertav3.objective.rtd import prediction_positions
from debertav3.train.batches import MicroBatch
from debertav3.train.config import OptimConfig
from debertav3.train.optim import build_optimizers, split_parameters
from debertav3.train.step import Part, StepRunner

from conftest import write_corpus
from test_rtd import make_batch, make_model
from test_train import config, final_weights, scalars

ACCELERATOR = Accelerator(cpu=True)


def micro_batches(count=1, seed=0):
    """Micro-batches with their prediction slots and sampling uniforms fixed, so every run draws alike."""
    batches = []
    for i in range(count):
        input_ids, mask, labels, _ = make_batch(seed=seed + i)
        positions = prediction_positions(labels)
        uniforms = 1.0 - torch.rand(positions.shape, generator=torch.Generator().manual_seed(seed + i))
        batches.append(MicroBatch(dict(input_ids=input_ids, attention_mask=mask, labels=labels,
                                       mask_positions=positions, uniforms=uniforms), 0))
    return batches


def runner(model, schedule, optim: OptimConfig, warmup=0):
    optimizers = build_optimizers(model, optim, schedule)
    params = {"joint": [p for p in model.parameters() if p.requires_grad], **split_parameters(model)}
    parts = {name: Part(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0), params[name])
             for name, opt in optimizers.items()}  # a constant lr, as the standalone steps take
    return StepRunner(ACCELERATOR, model, parts, optim.max_grad_norm, "skip", warmup)


def train(model, schedule, optim, steps=1, warmup=0, batches_per_step=1):
    steps_runner = runner(model, schedule, optim, warmup)
    for step in range(steps):
        steps_runner.run(step, micro_batches(batches_per_step, seed=10 * step))
    return model


def adamw(params, optim: OptimConfig):
    """A plain (unfused) AdamW, decay on matrices and tables only, built here rather than by train/optim.py."""
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": optim.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps)


def standalone_steps(model, optim, steps=2):
    """The official trainer's two steps written out: a generator step on L_MLM alone, then, on the replacements
    it sampled before its update, a discriminator step on lambda * BCE, E_D read from the updated generator."""
    generator = list(model.generator.parameters())
    discriminator = list(model.discriminator.parameters())
    if model.embedding_delta is not None:
        discriminator.append(model.embedding_delta)
    generator_adamw, discriminator_adamw = adamw(generator, optim), adamw(discriminator, optim)
    for step in range(steps):
        batch = micro_batches(seed=10 * step)[0]
        model.zero_grad(set_to_none=True)
        out = model(**batch.inputs)  # its mlm_loss is L_MLM alone
        out.mlm_loss.backward()
        torch.nn.utils.clip_grad_norm_(generator, optim.max_grad_norm)
        generator_adamw.step()
        model.zero_grad(set_to_none=True)

        sampled, real = out.discriminator_input_ids, batch.inputs["attention_mask"].bool()
        e_g = model.generator_embedding.detach()
        if model.embedding_sharing == "nes":
            table = model.discriminator.deberta.embeddings.word_embeddings.weight
        else:  # es: the generator's table as a constant; gdes: sg(E_G) + E_Delta
            table = e_g if model.embedding_sharing == "es" else e_g + model.embedding_delta
        logits = model.discriminator(sampled, batch.inputs["attention_mask"], table).float()
        replaced = out.rtd_labels.float()
        p = torch.sigmoid(logits)
        bce = -(replaced * torch.log(p) + (1 - replaced) * torch.log1p(-p))
        (model.rtd_weight * bce[real].sum() / real.sum()).backward()
        torch.nn.utils.clip_grad_norm_(discriminator, optim.max_grad_norm)
        discriminator_adamw.step()
    return model


def assert_same_parameters(a, b, **tolerance):
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(x, y, msg=name, **tolerance)


@pytest.mark.parametrize("sharing", ["es", "nes", "gdes"])
def test_decoupled_steps_are_a_generator_step_then_a_discriminator_step(sharing):
    """Two steps, so that a gradient one part leaves behind (the RTD gradient on es's shared table) would show in
    the other's next step. The clip binds (the norms here are ~2 to 20), so each part's own clipping is checked."""
    optim = OptimConfig(lr=1e-3, warmup_steps=0, max_grad_norm=0.5)
    model = make_model(sharing)
    reference = standalone_steps(copy.deepcopy(model), optim)
    train(model, "decoupled", optim, steps=2)
    assert_same_parameters(model, reference, rtol=1e-5, atol=1e-6)


def test_joint_and_decoupled_agree_under_nes_without_clipping():
    """No parameter receives both losses under nes and AdamW's state is per parameter: without a binding clip the
    two schedules take the same steps (to fp32 rounding), here over 3 steps of 2 micro-batches."""
    optim = OptimConfig(lr=1e-3, warmup_steps=0, max_grad_norm=1e9)
    joint = train(make_model("nes"), "joint", optim, steps=3, batches_per_step=2)
    decoupled = train(make_model("nes"), "decoupled", optim, steps=3, batches_per_step=2)
    assert_same_parameters(joint, decoupled, rtol=1e-5, atol=1e-6)


def test_under_gdes_the_decoupled_discriminator_reads_the_updated_generator_table():
    """The one difference that remains without clipping: the discriminator's pass follows the generator's update,
    so E_D = sg(E_G) + E_Delta uses the new E_G. The generators agree; the discriminators do not."""
    optim = OptimConfig(lr=1e-3, warmup_steps=0, max_grad_norm=1e9)
    joint, decoupled = (train(make_model("gdes"), schedule, optim) for schedule in ("joint", "decoupled"))
    for x, y in zip(joint.generator.parameters(), decoupled.generator.parameters()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    moved = max((x - y).abs().max().item() for x, y in zip(joint.discriminator.parameters(),
                                                           decoupled.discriminator.parameters()))
    assert moved > 1e-5


@pytest.mark.parametrize("schedule", ["joint", "decoupled"])
def test_the_rtd_weight_cancels_in_adam_without_clipping(schedule):
    """lambda 10 and 50 differ only through the clip and Adam's eps (here 1e-16) under gdes: same parameters."""
    optim = OptimConfig(lr=1e-3, warmup_steps=0, max_grad_norm=1e9, eps=1e-16)
    ten, fifty = (train(make_model("gdes", rtd_weight=w), schedule, optim, steps=3) for w in (10.0, 50.0))
    assert_same_parameters(ten, fifty, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("schedule", ["joint", "decoupled"])
def test_the_generator_trains_alone_during_its_warmup(schedule):
    optim = OptimConfig(lr=1e-3, warmup_steps=0)
    model, start = make_model("gdes"), make_model("gdes")
    steps_runner = runner(model, schedule, optim, warmup=2)
    discriminator = lambda m: [*m.discriminator.parameters(), m.embedding_delta]  # noqa: E731
    for step in range(2):
        metrics, _ = steps_runner.run(step, micro_batches(seed=step))
        assert "rtd_loss" not in metrics
    assert all(torch.equal(x, y) for x, y in zip(discriminator(model), discriminator(start)))
    assert not torch.equal(model.generator_embedding, start.generator_embedding)
    metrics, _ = steps_runner.run(2, micro_batches(seed=2))
    assert "rtd_loss" in metrics
    assert not all(torch.equal(x, y) for x, y in zip(discriminator(model), discriminator(start)))


def test_the_discriminator_stage_needs_the_sampled_inputs():
    model = make_model("gdes")
    with pytest.raises(ValueError, match="discriminator_input_ids"):
        model(**micro_batches()[0].inputs, stage="discriminator")


# The trainer end to end, with tests/test_train.py's settings.
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 300_000, 30_000)


def test_a_decoupled_run_resumes_exactly_and_logs_both_parts(corpus, tmp_path, capsys):
    from debertav3.train.loop import train as run

    keys = ("train.max_steps=6", "train.save_every=3", "rtd.schedule=decoupled",
            "train.gradient_accumulation_steps=2", "rtd.generator_warmup_steps=2")
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run(config(corpus, straight, *keys))
    assert "schedule       decoupled: a generator step on L_MLM, then a discriminator step on 50 L_RTD, each " \
           "clipped to 1 (rtd.schedule=decoupled); the generator alone for the first 2 steps" in capsys.readouterr().out
    run(config(corpus, interrupted, *keys), stop_after_steps=3)
    run(config(corpus, interrupted, *keys))
    a, b = final_weights(straight), final_weights(interrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logged = scalars(straight)
    assert logged["train/loss"] == scalars(interrupted)["train/loss"]
    assert set(logged["train/grad_norm_generator"]) == set(range(1, 7))
    assert set(logged["train/grad_norm_discriminator"]) == set(range(3, 7))  # not during the warm-up
    assert min(logged["train/rtd_loss"]) == 3
    assert logged["train/lr_discriminator"][1] == logged["train/lr"][1]


def test_resume_refuses_a_changed_schedule(corpus, tmp_path):
    from debertav3.errors import UserError
    from debertav3.train.loop import train as run

    run(config(corpus, tmp_path, "train.max_steps=2"))
    with pytest.raises(UserError, match="different rtd.schedule"):
        run(config(corpus, tmp_path, "train.max_steps=4", "rtd.schedule=decoupled"))
