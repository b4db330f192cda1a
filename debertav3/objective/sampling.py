"""Drawing the generator's replacements: token ~ softmax(logits / T), special tokens never drawn (ELECTRA sec. 3.1).

One uniform u in (0, 1] per masked row drives an inverse-CDF draw, so a row's replacement depends on its own
probabilities and uniform only: the same whether rows are drawn together, in chunks or split across processes.
Plain fixed-shape tensor operations with no gradient.
Shape legend: N masked rows, V vocabulary.
"""

from __future__ import annotations

import torch

BLOCK = 256  # tokens per block of the two-level draw in `inverse_cdf`


def sample_tokens(probs_NV: torch.Tensor, uniforms_N: torch.Tensor, special_ids: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw [N] from each row of `probs_NV` with the columns `special_ids` removed.

    Token i is drawn when cdf[i-1] < u * cdf[-1] <= cdf[i]: a token of zero probability (a special token) is never
    drawn. The rows need not be normalised.
    """
    specials = special_ids[special_ids < probs_NV.shape[-1]]
    return inverse_cdf(probs_NV.index_fill(-1, specials, 0.0), uniforms_N)


def inverse_cdf(probs_NV: torch.Tensor, uniforms_N: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """The first token of each row whose cdf reaches u * cdf[-1], found in two levels.

    First the block of `block` tokens (cumulative sums of the block sums), then the token inside that block (a
    cumulative sum over [N, block]): the same token as one cumulative sum over all V, with fewer sequential
    additions. Each level's threshold is clamped to that level's last cdf, so rounding can only ever land on a
    token of nonzero probability.
    """
    N, V = probs_NV.shape
    whole = V // block * block
    block_sums = probs_NV[:, :whole].reshape(N, whole // block, block).sum(-1)
    if whole < V:
        block_sums = torch.cat([block_sums, probs_NV[:, whole:].sum(-1, keepdim=True)], -1)
    block_cdf = block_sums.cumsum(-1)
    threshold = (uniforms_N.to(block_cdf.dtype) * block_cdf[:, -1]).unsqueeze(-1)
    chosen = torch.searchsorted(block_cdf, torch.minimum(threshold, block_cdf[:, -1:]))
    before = torch.where(chosen > 0, block_cdf.gather(-1, (chosen - 1).clamp_(min=0)), 0.0)
    columns = chosen * block + torch.arange(block, device=probs_NV.device)
    inside = probs_NV.gather(-1, columns.clamp(max=V - 1)).masked_fill_(columns >= V, 0.0).cumsum_(-1)
    offset = torch.searchsorted(inside, torch.minimum(threshold - before, inside[:, -1:]))
    return columns.gather(-1, offset.clamp_(max=block - 1)).squeeze(-1)
