"""Part (a) of the GPU check: our backbone against transformers' `DebertaV2Model` with the same weights, on the device.

For each attention implementation in `IMPLEMENTATIONS`, each sequence length, bidirectional and causal (the
auto-regressive model's triangular mask; transformers' encoder given the same triangle as a [B, L, L] mask, since its
public forward takes only a 2-D one): the fp32 forward pass (real tokens)
and every parameter's gradient against transformers' fp32 ones, and the same under bf16 autocast against the fp32
reference, with transformers' own bf16 error beside it as the yardstick of what bf16 costs this network.

Errors are relative L2 norms, ||ours - ref|| / ||ref||, the gradients' over all parameters together (the worst
single parameter is reported too). The weights are random at the scale a trained network has (unit-variance
activations, LayerNorm gains around 1, non-zero biases), so no term hides behind an init of 0 or 1 and the softmax
is neither flat nor saturated. fp32 matrix products run at full precision ("highest": no TF32), so the fp32
comparison measures the two implementations, not the matrix units' rounding.
"""

from __future__ import annotations

import math

import torch

from debertav3 import DebertaV3Model, ModelConfig
from debertav3.interop.hf import config_to_hf

IMPLEMENTATIONS = ("eager", "sdpa")  # every attention core that runs on a GPU (cpu_fused is the CPU's)
# Relative L2 error allowed. fp32: rounding differences between two fp32 implementations are ~1e-6; a real
# mismatch (a missing term, a wrong scale) is 1e-2 or more. bf16: 8 significant bits, through every layer.
TOLERANCES = {"fp32_forward": 1e-4, "fp32_grad": 1e-3, "bf16_forward": 3e-2, "bf16_grad": 1e-1}


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights at a trained network's scale, drawn on the CPU (the same values on any device)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("LayerNorm.weight"):
                noise = 1.0 + 0.1 * noise
            elif p.dim() == 1:
                noise = 0.1 * noise
            else:
                noise = noise / math.sqrt(p.shape[-1])
            p.copy_(noise)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(ours - reference) / torch.linalg.vector_norm(reference)).item()


def gradient_errors(ours: dict, reference: dict) -> tuple[float, str, float]:
    """Over all parameters together, and the worst single parameter (name, error)."""
    squares = {name: torch.linalg.vector_norm(ours.get(name, torch.zeros_like(ref)) - ref).item() ** 2
               for name, ref in reference.items()}
    norms = {name: torch.linalg.vector_norm(ref).item() for name, ref in reference.items()}
    total = math.sqrt(sum(squares.values()) / sum(n ** 2 for n in norms.values()))
    worst = max(reference, key=lambda name: math.sqrt(squares[name]) / max(norms[name], 1e-30))
    return total, worst, math.sqrt(squares[worst]) / max(norms[worst], 1e-30)


def forward_backward(model, ids, mask, weights, bf16: bool, causal: bool = False) -> tuple[torch.Tensor, dict]:
    """Hidden states at the real tokens (fp32) and every parameter's gradient of sum(hidden * weights)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        if isinstance(model, DebertaV3Model):
            out = model(ids, mask, causal=causal)
        elif causal:
            triangle = torch.ones(ids.shape[1], ids.shape[1], dtype=mask.dtype, device=ids.device).tril()
            out = model.encoder(model.embeddings(input_ids=ids, mask=mask), triangle * mask[:, None, :])[0]
        else:
            out = model(ids, attention_mask=mask)[0]
    (out.float() * weights).sum().backward()
    grads = {name: p.grad.detach().float().clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.detach().float()[mask.bool()], grads


def inputs(config: ModelConfig, batch: int, seq: int, device: torch.device):
    """Random ids, the last row padded from three quarters of its length, and the weights of the test loss."""
    gen = torch.Generator().manual_seed(seq)
    ids = torch.randint(4, config.vocab_size, (batch, seq), generator=gen)
    mask = torch.ones_like(ids)
    mask[-1, 3 * seq // 4:] = 0
    ids = ids.masked_fill(mask == 0, config.pad_token_id)
    weights = torch.randn(batch, seq, config.hidden_size, generator=gen) * mask[..., None]
    return ids.to(device), mask.to(device), weights.to(device)


def compare(config: ModelConfig, batch: int, seqs: tuple[int, ...], device: torch.device) -> dict:
    """One implementation (`config.attention_impl`) at each length: the errors and whether they pass."""
    import transformers

    hf_config = transformers.DebertaV2Config(**config_to_hf(config, ["DebertaV2Model"]))
    with torch.device(device):
        theirs = transformers.DebertaV2Model(hf_config).eval()
        ours = DebertaV3Model(config).eval()
    randomize_(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    results = {}
    for seq in seqs:
        ids, mask, weights = inputs(config, batch, seq, device)
        for causal in (False, True):
            ref_out, ref_grads = forward_backward(theirs, ids, mask, weights, False, causal)
            row = {}
            for precision, model in (("fp32", ours), ("bf16", ours), ("bf16_transformers", theirs)):
                out, grads = forward_backward(model, ids, mask, weights, precision != "fp32", causal)
                total, worst, worst_error = gradient_errors(grads, ref_grads)
                row.update({f"{precision}_forward": relative_error(out, ref_out), f"{precision}_grad": total,
                            f"{precision}_grad_worst": [worst, worst_error]})
            row["passed"] = all(row[key] <= tolerance for key, tolerance in TOLERANCES.items())
            results[f"seq{seq}" + ("_causal" if causal else "")] = row
    return results


def check_parity(run) -> dict:
    """Part (a): every implementation in IMPLEMENTATIONS at the run's backbone size and lengths."""
    size = run.sizes["parity"]
    config = ModelConfig(vocab_size=size["vocab"], hidden_size=size["hidden"], num_hidden_layers=size["layers"],
                         num_attention_heads=size["heads"], intermediate_size=4 * size["hidden"],
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        results = {impl: compare(config.replace(attention_impl=impl), size["batch"], size["seqs"], run.device)
                   for impl in IMPLEMENTATIONS}
    finally:
        torch.set_float32_matmul_precision(precision)
    return {"tolerances": TOLERANCES, "size": size, "implementations": results,
            "passed": all(row["passed"] for rows in results.values() for row in rows.values())}
