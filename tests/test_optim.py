"""The optimizer's parameter groups: weight decay by tensor rank, and the discriminator's lr scale per sharing mode."""

import pytest
import torch

from debertav3.train.config import OptimConfig
from debertav3.train.optim import build_optimizer, linear_schedule

from test_rtd import make_batch, make_model


def lr_of_each_parameter(optimizer):
    return {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}


@pytest.mark.parametrize("sharing", ["es", "nes", "gdes"])
def test_discriminator_and_delta_get_the_scaled_lr_and_the_generator_the_base_lr(sharing):
    model = make_model(sharing)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, discriminator_lr_scale=3.0, warmup_steps=0))
    lrs = lr_of_each_parameter(optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(lrs) == len(trainable) == sum(len(g["params"]) for g in optimizer.param_groups)  # each once
    scaled = {id(p) for p in model.discriminator.parameters()}
    if sharing == "gdes":
        scaled.add(id(model.embedding_delta))
    for param in trainable:
        assert lrs[id(param)] == pytest.approx(3e-3 if id(param) in scaled else 1e-3)
    assert lrs[id(model.generator_embedding)] == pytest.approx(1e-3)  # under es the table is the generator's too
    for group in optimizer.param_groups:
        assert group["weight_decay"] == (0.01 if group["params"][0].dim() >= 2 else 0.0)
        assert all((p.dim() >= 2) == (group["params"][0].dim() >= 2) for p in group["params"])


def test_first_adam_step_moves_each_side_by_its_own_lr():
    """Adam's first update is lr * g / |g| per element: the step sizes show the lr each parameter really got."""
    model, batch = make_model("gdes"), make_batch()
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, discriminator_lr_scale=4.0, weight_decay=0.0,
                                                   eps=1e-12, warmup_steps=0))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model(*batch[:3], generator=torch.Generator().manual_seed(0)).loss.backward()
    optimizer.step()
    step = {name: (p.detach() - before[name]).abs().max().item() for name, p in model.named_parameters()}
    assert step["embedding_delta"] == pytest.approx(4e-3, rel=1e-3)
    assert step["discriminator.deberta.encoder.layer.0.attention.self.query_proj.weight"] == pytest.approx(4e-3,
                                                                                                          rel=1e-3)
    assert step["generator.deberta.encoder.layer.0.attention.self.query_proj.weight"] == pytest.approx(1e-3,
                                                                                                      rel=1e-3)
    assert step["generator.deberta.embeddings.word_embeddings.weight"] == pytest.approx(1e-3, rel=1e-3)


def test_schedule_keeps_the_ratio_and_group_zero_carries_the_base_lr():
    optimizer = build_optimizer(make_model("nes"), OptimConfig(lr=1e-3, discriminator_lr_scale=0.5, warmup_steps=2))
    scheduler = linear_schedule(optimizer, warmup_steps=2, total_steps=10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        base = scheduler.get_last_lr()[0]
        assert sorted({round(lr / base, 6) for lr in scheduler.get_last_lr()}) == [0.5, 1.0]
    assert base == pytest.approx(1e-3 * (10 - 5) / (10 - 2))  # the logged lr: the base schedule at step 5


def test_one_lr_gives_the_two_groups_of_a_single_lr_run():
    """Checkpoints written before the scale existed hold two groups; a scale of 1 must still load them."""
    optimizer = build_optimizer(make_model("gdes"), OptimConfig(lr=1e-3, warmup_steps=0))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_config_rejects_a_scale_that_is_not_positive(value):
    with pytest.raises(ValueError, match="optim.discriminator_lr_scale"):
        OptimConfig(discriminator_lr_scale=value)
