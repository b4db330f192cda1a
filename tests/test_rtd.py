"""The RTD objective: gradient flow per sharing mode, labels, sampling, and that it learns."""

import math

import pytest
import torch

from debertav3 import RTDModel, generator_config, preset
from debertav3.objective.rtd import detection_metrics, prediction_positions
from debertav3.objective.sampling import sample_tokens

MASK_ID = 999
SPECIALS = (0, 1, 2, 3, MASK_ID)


def make_model(sharing="gdes", rtd_weight=50.0, seed=0, generator_width=None, **kwargs):
    torch.manual_seed(seed)
    disc = preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return RTDModel(generator_config(disc, hidden_size=generator_width), disc, embedding_sharing=sharing,
                    rtd_weight=rtd_weight, special_token_ids=SPECIALS, **kwargs)


def make_batch(seed=0, batch=4, length=32, pad_last=10):
    """[CLS] w ... w [SEP] [PAD]...: 15% of the words masked with [MASK], labels -100 elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    original = torch.randint(4, MASK_ID, (batch, length), generator=gen)
    mask = torch.ones_like(original)
    original[:, 0] = 1
    original[:, -1] = 2
    mask[-1, -pad_last:] = 0
    original[-1, -pad_last:] = 0
    original[-1, -pad_last - 1] = 2
    words = (original > 3) & mask.bool()
    selected = words & (torch.rand(original.shape, generator=gen) < 0.15)
    selected[:, 1] = True  # at least one masked position per row
    labels = torch.where(selected, original, torch.full_like(original, -100))
    return original.masked_fill(selected, MASK_ID), mask, labels, original


def grads_of(model, loss_name, batch, seed=0):
    model.zero_grad(set_to_none=True)
    out = model(*batch[:3], generator=torch.Generator().manual_seed(seed))
    getattr(out, loss_name).backward()
    return out


def is_zero(grad):
    return grad is None or not grad.any()


@pytest.mark.parametrize("generator_width", [None, 32])  # 32: ELECTRA's narrower generator on the same table
def test_gdes_delta_starts_at_zero_and_rtd_never_reaches_generator_embedding(generator_width):
    model, batch = make_model("gdes", generator_width=generator_width), make_batch()
    assert model.embedding_delta is not None and not model.embedding_delta.any()
    grads_of(model, "rtd_loss", batch)
    assert is_zero(model.generator_embedding.grad)
    assert not is_zero(model.embedding_delta.grad)
    grads_of(model, "mlm_loss", batch)
    assert is_zero(model.embedding_delta.grad)
    assert not is_zero(model.generator_embedding.grad)


def test_gdes_effective_embedding_is_sum_after_optimizer_steps():
    model, batch = make_model("gdes"), make_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    start = model.generator_embedding.detach().clone()
    for step in range(3):
        grads_of(model, "loss", batch, seed=step)
        optimizer.step()
    assert model.embedding_delta.abs().sum() > 0
    assert not torch.equal(model.generator_embedding, start)
    assert torch.equal(model.discriminator_embedding(), model.generator_embedding + model.embedding_delta)


@pytest.mark.parametrize("steps", [1, 3])
def test_gdes_generator_embedding_update_independent_of_rtd_weight(steps):
    """A delta that aliased E_D's own weight (a published bug) would make E_G depend on the RTD loss."""
    updated = []
    for weight in (0.0, 50.0):
        model, batch = make_model("gdes", rtd_weight=weight), make_batch()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for step in range(steps):
            grads_of(model, "loss", batch, seed=step)
            optimizer.step()
        updated.append(model.generator_embedding.detach().clone())
    assert torch.equal(updated[0], updated[1])


def test_es_one_parameter_trained_by_both_losses():
    model, batch = make_model("es"), make_batch()
    assert model.discriminator_embedding() is model.generator_embedding
    assert sum(p is model.generator_embedding for p in model.parameters()) == 1
    assert model.embedding_delta is None
    grads_of(model, "rtd_loss", batch)
    assert not is_zero(model.generator_embedding.grad)
    grads_of(model, "mlm_loss", batch)
    assert not is_zero(model.generator_embedding.grad)


def test_nes_separate_tables_and_rtd_leaves_generator_embedding_alone():
    model, batch = make_model("nes"), make_batch()
    assert model.discriminator_embedding() is not model.generator_embedding
    grads_of(model, "rtd_loss", batch)
    assert is_zero(model.generator_embedding.grad)
    assert not is_zero(model.discriminator_embedding().grad)
    grads_of(model, "mlm_loss", batch)
    assert is_zero(model.discriminator_embedding().grad)


@pytest.mark.parametrize("sharing", ["es", "nes", "gdes"])
def test_labels_mark_exactly_the_changed_non_pad_tokens(sharing):
    model, batch = make_model(sharing), make_batch()
    _, mask, labels, original = batch
    out = model(*batch[:3], generator=torch.Generator().manual_seed(1))
    changed = out.discriminator_input_ids != original
    masked = labels != -100
    assert not (changed & ~masked).any(), "replacements outside masked positions"
    assert torch.equal(out.rtd_labels, changed & mask.bool())
    assert not out.rtd_labels[mask == 0].any()
    assert abs(out.replaced_fraction.item() - out.rtd_labels[mask.bool()].float().mean().item()) < 1e-6


def test_sampling_follows_softmax_and_skips_special_tokens():
    model = make_model("gdes", temperature=1.0)
    logits = torch.full((20000, 1000), -30.0)
    logits[:, 2] = 10.0  # [SEP] would win every draw if specials were allowed
    logits[:, 10], logits[:, 11] = 0.0, torch.log(torch.tensor(3.0))
    probs = torch.softmax(logits / model.temperature, -1)
    draws = sample_tokens(probs, 1.0 - torch.rand(20000, generator=torch.Generator().manual_seed(0)),
                          model.special_token_ids)
    assert not torch.isin(draws, torch.tensor(SPECIALS)).any()
    share_11 = (draws == 11).float().mean().item()
    assert abs(share_11 - 0.75) < 0.02  # p(11) = 3 / (1 + 3)


def test_metrics_hand_computed():
    logits = torch.tensor([2.0, -1.0, 3.0, -2.0, 1.0, 5.0, 5.0])
    replaced = torch.tensor([1, 1, 0, 0, 1, 1, 0]).bool()
    valid = torch.tensor([1, 1, 1, 1, 1, 0, 0]).bool()  # the last two are padding: they count nowhere
    m = detection_metrics(logits, replaced, valid)
    # predicted replaced: 0, 2, 4; true replaced: 0, 1, 4 -> TP 2, precision 2/3, recall 2/3, accuracy 3/5
    assert m["precision"].item() == pytest.approx(2 / 3)
    assert m["recall"].item() == pytest.approx(2 / 3)
    assert m["rtd_accuracy"].item() == pytest.approx(0.6)
    assert m["replaced_fraction"].item() == pytest.approx(0.6)
    # pairs (replaced, original) over the valid five: (2, 3) (2, -2) (-1, 3) (-1, -2) (1, 3) (1, -2) -> 3 / 6
    # (with the padding counted it would be 5.5 / 12: the replaced 5 wins twice and ties the original 5)
    assert m["rtd_auc"].item() == pytest.approx(3 / 6)


def test_metric_tensors_carry_auc_and_loss_vs_prior_of_the_detached_scores():
    from debertav3.objective.metrics import prior_relative_loss, roc_auc

    model, batch = make_model("gdes"), make_batch()
    _, mask, _, _ = batch
    out = model(*batch[:3], generator=torch.Generator().manual_seed(1))
    assert not out.rtd_logits.requires_grad and out.rtd_logits.shape == mask.shape
    real = mask.bool()
    scores, targets = out.rtd_logits[real], out.rtd_labels[real].float()
    metrics = out.metric_tensors()
    assert "rtd_logits" not in metrics and "rtd_labels" not in metrics
    assert metrics["rtd_auc"].item() == pytest.approx(roc_auc(scores, targets).item(), abs=1e-7)
    assert metrics["rtd_loss_vs_prior"].item() == pytest.approx(prior_relative_loss(scores, targets).item(),
                                                                rel=1e-6)
    # with the default denominators the ratio's BCE is the model's RTD loss (both over the non-pad tokens)
    q = out.replaced_fraction.item()
    assert out.rtd_loss_vs_prior.item() == pytest.approx(
        out.rtd_loss.item() / -(q * math.log(q) + (1 - q) * math.log(1 - q)), rel=1e-5)
    assert 0.0 <= metrics["rtd_auc"].item() <= 1.0


def test_mlm_objective_has_no_discriminator():
    torch.manual_seed(0)
    model = RTDModel(preset("tiny"), objective="mlm")
    out = model(*make_batch()[:3])
    assert model.discriminator is None and out.rtd_loss is None
    assert torch.equal(out.loss, out.mlm_loss)
    assert out.rtd_logits is None and "rtd_auc" not in out.metric_tensors()


def test_narrow_generator_reads_the_shared_table_through_a_projection():
    model = make_model("es", generator_width=32)
    assert model.generator.config.hidden_size == 32 and model.generator.config.embedding_size == 64
    assert model.generator_embedding.shape == model.discriminator_embedding().shape == (1000, 64)
    assert model.generator.deberta.embeddings.embed_proj.weight.shape == (32, 64)
    assert model.generator.lm_predictions["lm_head"].dense.weight.shape == (64, 32)
    assert make_model("gdes").generator.deberta.embeddings.embed_proj is None  # same width: no projection


def test_sharing_modes_reject_mismatched_widths():
    disc = preset("tiny")
    own_width = generator_config(disc, hidden_size=32).replace(embedding_size=None)  # a 32-wide table of its own
    with pytest.raises(ValueError, match="nes"):
        RTDModel(own_width, disc, embedding_sharing="gdes")
    RTDModel(own_width, disc, embedding_sharing="nes")  # separate tables may differ
    with pytest.raises(ValueError, match="embedding_sharing"):
        RTDModel(generator_config(disc), disc, embedding_sharing="tied")


@pytest.mark.parametrize("sharing,generator_width", [("es", None), ("nes", None), ("gdes", None), ("gdes", 32)])
def test_overfits_one_batch(sharing, generator_width):
    model, batch = make_model(sharing, generator_width=generator_width), make_batch(batch=8, length=48)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for step in range(200):
        out = grads_of(model, "loss", batch, seed=step)
        optimizer.step()
        history.append((out.mlm_loss.item(), out.rtd_loss.item()))
    first = torch.tensor(history[:5]).mean(0)
    last = torch.tensor(history[-5:]).mean(0)
    assert (last < first / 2).all(), f"{sharing}: losses {first.tolist()} -> {last.tolist()}"


def test_split_batch_with_global_denominators_equals_whole_batch():
    """What data parallelism relies on: halves with shared slots, uniforms and global counts average to the
    whole."""
    model, batch = make_model("gdes"), make_batch(batch=4)
    ids, mask, labels, _ = batch
    masked = labels != -100
    positions = prediction_positions(labels, 12)
    uniforms = 1.0 - torch.rand(positions.shape, generator=torch.Generator().manual_seed(3))
    whole = model(ids, mask, labels, positions, uniforms)
    denominators = torch.tensor([masked.sum().item() / 2, mask.sum().item() / 2])
    halves = [model(ids[rows], mask[rows], labels[rows], positions[rows], uniforms[rows], denominators)
              for rows in (slice(0, 2), slice(2, 4))]
    for name in ("loss", "mlm_loss", "rtd_loss"):
        mean_of_halves = (getattr(halves[0], name) + getattr(halves[1], name)) / 2
        assert torch.allclose(mean_of_halves, getattr(whole, name), atol=1e-6), name


def test_prediction_positions_by_hand():
    """Masked positions first, in order; then the unmasked ones in order, distinct, padding each row to the slots."""
    labels = torch.full((2, 6), -100)
    labels[0, [4, 1]] = 7
    labels[1, 3] = 9
    assert prediction_positions(labels, 3).tolist() == [[1, 4, 0], [3, 0, 1]]
    assert prediction_positions(labels).tolist() == [[1, 4], [3, 0]]  # slots: the most masked of any row


@pytest.mark.parametrize("sharing", ["es", "nes", "gdes"])
def test_more_slots_change_nothing_but_the_padding(sharing):
    """The losses, replacements and metrics with exactly the needed slots equal those with many padding slots,
    when each masked position gets the same uniform: padding slots carry no loss and write nothing back."""
    model, batch = make_model(sharing), make_batch()
    ids, mask, labels, _ = batch
    tight = prediction_positions(labels)
    loose = prediction_positions(labels, 20)
    uniforms = 1.0 - torch.rand(loose.shape, generator=torch.Generator().manual_seed(4))
    a = model(ids, mask, labels, tight, uniforms[:, :tight.shape[1]])
    b = model(ids, mask, labels, loose, uniforms)
    assert torch.equal(a.discriminator_input_ids, b.discriminator_input_ids)
    for name, value in a.metric_tensors().items():
        assert torch.allclose(value, b.metric_tensors()[name], rtol=1e-6, atol=1e-7), name
