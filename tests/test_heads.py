"""Pretraining heads: the masked-rows EMD against the full-sequence EMD, and the RTD head's [CLS] term."""

import torch

from debertav3 import preset
from debertav3.model import MaskedLMModel, RTDHead
from debertav3.objective.rtd import prediction_positions


def full_sequence_emd(model: MaskedLMModel, ids, mask):
    """Reference: the EMD for every position (official form), computed with the layer called directly."""
    encoded = model.deberta.encode(ids, mask, num_layers=model.config.num_hidden_layers - 1)
    hidden, keep, (rel, idx) = encoded.states[-1], encoded.key_padding_mask, encoded.relative
    query = model.deberta.embeddings.position_embeddings.weight[: ids.shape[1]] + hidden
    last = model.deberta.encoder.layer[-1]
    for _ in range(2):
        query = last(hidden, keep, query, rel, idx)
    return query


def test_masked_rows_emd_equals_full_emd_at_masked_positions():
    torch.manual_seed(0)
    model = MaskedLMModel(preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 1000, (3, 40), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 25:] = 0
    masked = (torch.rand(ids.shape, generator=gen) < 0.2) & mask.bool()
    masked[0, :] = False
    masked[0, 5] = True  # rows with very different numbers of masked positions
    positions = prediction_positions(torch.where(masked, ids, -100))  # [3, M]; rows padded with unmasked ones
    with torch.no_grad():
        ours = model(ids, mask, positions)
        full = full_sequence_emd(model, ids, mask)
        reference_h = torch.gather(full, 1, positions[..., None].expand(-1, -1, full.shape[-1]))
        reference = model.lm_predictions["lm_head"](reference_h, model.deberta.embeddings.word_embeddings.weight)
    assert ours.shape == (3, int(masked.sum(1).max()), 1000)
    assert (ours - reference).abs().max() <= 1e-5  # at the masked positions and at the padding slots alike
    with torch.no_grad():  # positions None: every position in order, the form the auto-regressive model uses
        every = model(ids, mask, None)
        expected = model.lm_predictions["lm_head"](full, model.deberta.embeddings.word_embeddings.weight)
    assert (every - expected).abs().max() <= 1e-5


def test_rtd_head_adds_cls_state_to_every_token():
    torch.manual_seed(0)
    head = RTDHead(preset("tiny")).eval()
    h = torch.randn(2, 10, 64)
    shifted = h.clone()
    shifted[:, 0] += torch.randn(64)  # (a constant shift would vanish in the LayerNorm)
    with torch.no_grad():
        base, moved = head(h), head(shifted)
        # Reference: LayerNorm(h + h_cls) -> dense -> gelu -> classifier (official LMMaskPredictionHead).
        x = torch.nn.functional.layer_norm(h + h[:, :1], (64,), head.LayerNorm.weight, head.LayerNorm.bias,
                                           head.LayerNorm.eps)
        expected = head.classifier(torch.nn.functional.gelu(head.dense(x))).squeeze(-1)
    assert torch.allclose(base, expected, atol=1e-6)
    assert (moved[:, 1:] - base[:, 1:]).abs().min() > 0  # every token sees the [CLS] state
