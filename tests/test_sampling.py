"""Drawing the generator's replacements (debertav3.objective.sampling): the inverse-CDF draw by hand."""

import torch

from debertav3.objective.sampling import inverse_cdf, sample_tokens


def test_inverse_cdf_draw_hand_computed():
    """Row probabilities [0.1 (special), 0.2, 0.3, 0.4]: without the special token the cdf is [0, .2, .5, .9]/.9."""
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).expand(5, 4)
    uniforms = torch.tensor([0.01, 2 / 9, 0.23, 5 / 9 + 1e-6, 1.0])
    assert sample_tokens(probs, uniforms, torch.tensor([0])).tolist() == [1, 1, 2, 3, 3]


def test_two_level_draw_hand_computed_across_blocks():
    """Blocks of 4 over 10 tokens [.125 .25 0 .125 | 0 0 0 0 | .5 0]: cdf .125 .375 .375 .5 .5 .5 .5 .5 1 1. The
    draw is the first token whose cdf reaches u: inside a block, at a block's end, past an empty block, in the
    short last block, and never the zero-probability tokens after the last positive one (u = 1)."""
    probs = torch.tensor([[0.125, 0.25, 0.0, 0.125, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0]]).expand(6, 10)
    uniforms = torch.tensor([0.0625, 0.375, 0.5, 0.5 + 2 ** -10, 0.75, 1.0])
    assert inverse_cdf(probs, uniforms, block=4).tolist() == [0, 1, 3, 8, 8, 8]
    assert inverse_cdf(probs, uniforms, block=256).tolist() == [0, 1, 3, 8, 8, 8]  # one block
