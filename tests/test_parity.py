"""Numerical parity with transformers' DebertaV2 (the independent reference), fp32 on CPU."""

import itertools

import pytest
import torch

from debertav3 import DebertaV3Model, preset
from debertav3.interop.hf import config_to_hf, load_backbone, save_backbone
from debertav3.model import LMPredictionHead, implementations

transformers = pytest.importorskip("transformers", reason="transformers (the dev extra) is the parity reference")

# fp32 against fp32: the two implementations round differently (GEMM blocking, summation order), and each differs
# from the fp64 result by up to ~1.3e-5 after two post-LN layers at length 300. The tight check is in fp64, where
# what remains is transformers' score scale, which it computes as a float32 tensor (relative error ~1e-7).
TOL = 3e-5
TOL_FP64 = 1e-6
# The attention implementations held to transformers: the reference, what "auto" runs here, and each fast path.
IMPLEMENTATIONS = ["auto", *implementations.NAMES["attention"]]


def hf_config(cfg):
    return transformers.DebertaV2Config(**config_to_hf(cfg, ["DebertaV2Model"]))


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Random values in every parameter (LayerNorms and biases too), so no term can hide behind an init of 0 or 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if name.endswith("LayerNorm.weight") else 0.0))


def paired_models(attention_impl="auto", **overrides):
    cfg = preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attention_impl=attention_impl,
                 **overrides)
    theirs = transformers.DebertaV2Model(hf_config(cfg)).eval()
    randomize_(theirs)
    ours = DebertaV3Model(cfg).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return cfg, ours, theirs


CASES = list(itertools.product([True, False], [["c2p", "p2c"], ["c2p"], ["p2c"]], [256, -1],
                               ["layer_norm", "none"]))


@pytest.mark.parametrize("attention_impl", ["eager", "auto"])
@pytest.mark.parametrize("share_att_key,pos_att_type,position_buckets,norm_rel_ebd", CASES)
def test_backbone_matches_transformers(attention_impl, share_att_key, pos_att_type, position_buckets, norm_rel_ebd):
    cfg, ours, theirs = paired_models(attention_impl, share_att_key=share_att_key, pos_att_type=pos_att_type,
                                      position_buckets=position_buckets, norm_rel_ebd=norm_rel_ebd)
    gen = torch.Generator().manual_seed(1)
    # Lengths under position_buckets (the CPU band layout unblocked, then in two blocks of 32) and one over it,
    # so both the linear and the log-bucket ranges are exercised.
    for length in (37, 64, 300):
        ids = torch.randint(4, cfg.vocab_size, (2, length), generator=gen)
        mask = torch.ones_like(ids)
        for dtype, tol in ((torch.float32, TOL), (torch.float64, TOL_FP64)):
            ours.to(dtype), theirs.to(dtype)
            with torch.no_grad():
                diff = (ours(ids, mask) - theirs(ids, attention_mask=mask).last_hidden_state).abs().max().item()
            assert diff <= tol, f"length {length}, {dtype}: max abs diff {diff}"


@pytest.mark.parametrize("attention_impl,length", [(name, 150) for name in IMPLEMENTATIONS] + [("cpu_fused", 96)])
def test_gradients_match_transformers(attention_impl, length):
    """Every parameter's gradient equals transformers', through every attention implementation: the reference,
    the hand-written CPU kernel (cpu_fused, also what auto runs here; gathered position terms at 150, the band
    layout in three blocks at 96) and the SDPA path that GPUs take (here on the CPU, SDPA's math kernel)."""
    cfg, ours, theirs = paired_models(attention_impl)
    ids = torch.randint(4, cfg.vocab_size, (2, length), generator=torch.Generator().manual_seed(7))
    mask = torch.ones_like(ids)
    mask[1, length - 30:] = 0
    weights = torch.randn(2, length, cfg.hidden_size, generator=torch.Generator().manual_seed(8)) * mask[..., None]
    (ours(ids, mask) * weights).sum().backward()
    (theirs(ids, attention_mask=mask).last_hidden_state * weights).sum().backward()
    reference = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        expected = reference[name].grad
        assert (param.grad - expected).abs().max() <= 1e-4 * max(1.0, expected.abs().max().item()), name


@pytest.mark.parametrize("attention_impl", IMPLEMENTATIONS)
def test_padding_leaves_real_tokens_unchanged_and_matches_transformers(attention_impl):
    cfg, ours, theirs = paired_models(attention_impl)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(4, cfg.vocab_size, (3, 50), generator=gen)
    lengths = [50, 31, 7]
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    ids = ids.masked_fill(mask == 0, cfg.pad_token_id)
    with torch.no_grad():
        batched = ours(ids, mask)
        reference = theirs(ids, attention_mask=mask).last_hidden_state
        for row, n in enumerate(lengths):
            alone = ours(ids[row:row + 1, :n], mask[row:row + 1, :n])[0]
            assert (batched[row, :n] - alone).abs().max() <= TOL
            assert (batched[row, :n] - reference[row, :n]).abs().max() <= TOL


def test_mlm_head_matches_transformers_masked_lm():
    cfg = preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf_cfg = transformers.DebertaV2Config(**config_to_hf(cfg, ["DebertaV2ForMaskedLM"]))
    theirs = transformers.DebertaV2ForMaskedLM(hf_cfg).eval()
    randomize_(theirs, seed=3)
    state = theirs.state_dict()
    backbone = DebertaV3Model(cfg).eval()
    backbone.load_state_dict({k[len("deberta."):]: v for k, v in state.items() if k.startswith("deberta.")})
    head = LMPredictionHead(cfg).eval()
    prefix = "lm_predictions.lm_head."
    head.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    ids = torch.randint(4, cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = head(backbone(ids), backbone.embeddings.word_embeddings.weight)
        reference = theirs(ids).logits
    assert (ours - reference).abs().max() <= TOL


def test_narrow_network_on_wider_embeddings_matches_transformers():
    """embedding_size != hidden_size (ELECTRA's smaller generator on the shared table): the embeddings' embed_proj
    against DebertaV2Model, and the MLM head, which maps back to the embedding width, against transformers' legacy
    head (its non-legacy head has no such map), on every logit and every gradient."""
    cfg = preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, embedding_size=96)
    hf_cfg = transformers.DebertaV2Config(**config_to_hf(cfg, ["DebertaV2ForMaskedLM"], legacy=True))
    theirs = transformers.DebertaV2ForMaskedLM(hf_cfg).eval()
    randomize_(theirs, seed=7)
    state = theirs.state_dict()
    backbone = DebertaV3Model(cfg).eval()
    backbone.load_state_dict({k[len("deberta."):]: v for k, v in state.items() if k.startswith("deberta.")},
                             strict=True)
    head = LMPredictionHead(cfg).eval()
    legacy = "cls.predictions."
    head.load_state_dict({"dense.weight": state[legacy + "transform.dense.weight"],
                          "dense.bias": state[legacy + "transform.dense.bias"],
                          "LayerNorm.weight": state[legacy + "transform.LayerNorm.weight"],
                          "LayerNorm.bias": state[legacy + "transform.LayerNorm.bias"],
                          "bias": state[legacy + "bias"]}, strict=True)
    ids = torch.randint(4, cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(8))
    table = backbone.embeddings.word_embeddings.weight
    assert table.shape == (cfg.vocab_size, 96) and backbone.embeddings.embed_proj.weight.shape == (64, 96)
    ours = head(backbone(ids), table)
    reference = theirs(ids).logits
    assert (ours - reference).abs().max() <= TOL
    weights = torch.randn(ours.shape, generator=torch.Generator().manual_seed(9))
    (ours * weights).sum().backward()
    (reference * weights).sum().backward()
    pairs = [(p.grad, dict(theirs.named_parameters())["deberta." + k].grad) for k, p in backbone.named_parameters()]
    pairs.append((head.dense.weight.grad, theirs.cls.predictions.transform.dense.weight.grad))
    for mine, reference in pairs:  # gradients reach ~100 here: fp32 rounding relative to their scale
        assert (mine - reference).abs().max() <= TOL * reference.abs().max().clamp(min=1)


def test_hf_directory_round_trip_is_exact(tmp_path):
    cfg, _, theirs = paired_models()
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_backbone(tmp_path / "hf").eval()
    save_backbone(ours, tmp_path / "ours")
    reloaded, info = transformers.AutoModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = torch.randint(4, cfg.vocab_size, (2, 64), generator=torch.Generator().manual_seed(5))
    for key, value in theirs.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    with torch.no_grad():
        expected = theirs(ids).last_hidden_state
        assert torch.equal(reloaded.eval()(ids).last_hidden_state, expected)
        assert (ours(ids) - expected).abs().max() <= TOL


# bf16 keeps 8 mantissa bits; measured max abs diff ~0.03 on unit-scale outputs after two layers (2x margin).
BF16_TOL = 0.06


@pytest.mark.parametrize("attention_impl", IMPLEMENTATIONS)
def test_bf16_forward_close_to_fp32(attention_impl):
    cfg = preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attention_impl=attention_impl)
    model = DebertaV3Model(cfg).eval()
    ids = torch.randint(4, cfg.vocab_size, (2, 128), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = model(ids)
        half = model.to(torch.bfloat16)(ids)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    assert (half.float() - full).abs().max() <= BF16_TOL
