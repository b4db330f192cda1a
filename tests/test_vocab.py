"""The generator's vocabulary step: the inverse-CDF draw by hand, the chunked fast path against the plain autograd
composition it replaces, and the tied table's one gradient (ops/tied_table.py) against autograd's sum."""

import pytest
import torch
import torch.nn.functional as F

from debertav3 import preset
from debertav3.model.embeddings import Embeddings
from debertav3.objective.sampling import inverse_cdf, sample_tokens
from debertav3.ops.mlm_loss import chunked_vocabulary_loss
from debertav3.ops.tied_table import TiedLookup

SPECIALS = torch.tensor([0, 1, 2, 3])


def inputs(n=23, v=50, h=8):
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(n, h, generator=gen, requires_grad=True)
    table = torch.randn(v, h, generator=gen, requires_grad=True)
    bias = (0.1 * torch.randn(v, generator=gen)).requires_grad_()
    targets = torch.randint(4, v, (n,), generator=gen)
    uniforms = 1.0 - torch.rand(n, generator=gen)
    return states, table, bias, targets, uniforms


@pytest.mark.parametrize("temperature,loss_weight", [(1.0, 1.0), (0.7, 3.0)])
def test_chunked_loss_gradients_and_samples_equal_the_unfused_step(temperature, loss_weight):
    """23 rows in chunks of 5; loss_weight 1 takes the path where backward skips scaling the [V, HD] gradient, 3 the
    one that scales it."""
    states, table, bias, targets, uniforms = inputs()
    loss, accuracy, sampled = chunked_vocabulary_loss(states, table, bias, targets, uniforms, 40.0, temperature,
                                                      SPECIALS, chunk_bytes=4 * 50 * 5)
    got = torch.autograd.grad(loss_weight * loss, (states, table, bias))

    logits = states @ table.t() + bias
    expected_loss = F.cross_entropy(logits, targets, reduction="sum") / 40.0
    expected = torch.autograd.grad(loss_weight * expected_loss, (states, table, bias))
    probs = torch.softmax(logits.detach() / temperature, -1)
    assert torch.allclose(loss, expected_loss, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, expected))
    assert accuracy.item() == (logits.argmax(-1) == targets).float().mean().item()
    assert torch.equal(sampled, sample_tokens(probs, uniforms, SPECIALS))


def test_chunked_no_sampling_without_uniforms_and_no_second_backward():
    states, table, bias, targets, _ = inputs()
    loss, _, sampled = chunked_vocabulary_loss(states, table, bias, targets, None, 23, 1.0, SPECIALS)
    assert sampled.numel() == 0
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already backpropagated"):
        loss.backward()


def test_inverse_cdf_draw_hand_computed():
    """Row probabilities [0.1 (special), 0.2, 0.3, 0.4]: without the special token the cdf is [0, .2, .5, .9]/.9."""
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).expand(5, 4)
    uniforms = torch.tensor([0.01, 2 / 9, 0.23, 5 / 9 + 1e-6, 1.0])
    assert sample_tokens(probs, uniforms, torch.tensor([0])).tolist() == [1, 1, 2, 3, 3]
    owned = probs.clone()
    assert sample_tokens(owned, uniforms, torch.tensor([0]), in_place=True).tolist() == [1, 1, 2, 3, 3]
    assert torch.equal(owned, probs)  # the special column is restored


def test_two_level_draw_hand_computed_across_blocks():
    """Blocks of 4 over 10 tokens [.125 .25 0 .125 | 0 0 0 0 | .5 0]: cdf .125 .375 .375 .5 .5 .5 .5 .5 1 1. The
    draw is the first token whose cdf reaches u: inside a block, at a block's end, past an empty block, in the
    short last block, and never the zero-probability tokens after the last positive one (u = 1)."""
    probs = torch.tensor([[0.125, 0.25, 0.0, 0.125, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0]]).expand(6, 10)
    uniforms = torch.tensor([0.0625, 0.375, 0.5, 0.5 + 2 ** -10, 0.75, 1.0])
    assert inverse_cdf(probs, uniforms, block=4).tolist() == [0, 1, 3, 8, 8, 8]
    assert inverse_cdf(probs, uniforms, block=256).tolist() == [0, 1, 3, 8, 8, 8]  # one block


def test_chunked_no_masked_rows_gives_zero_loss_and_zero_gradients():
    states, table, bias, targets, uniforms = inputs(n=0)
    loss, accuracy, sampled = chunked_vocabulary_loss(states, table, bias, targets, uniforms, 7.0, 1.0, SPECIALS)
    loss.backward()
    assert loss.item() == 0.0 and accuracy.item() == 0.0 and sampled.numel() == 0
    assert not table.grad.any() and not bias.grad.any()


def tied_setup():
    """A table read by an Embeddings lookup (padding id 0 and repeated ids included) and by a tied head."""
    embeddings = Embeddings(preset("tiny", vocab_size=50, hidden_size=8, num_attention_heads=2,
                                   hidden_dropout_prob=0.0))
    mixing = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    _, table, bias, _, _ = inputs()
    ids = torch.tensor([[1, 5, 5, 0, 7, 0], [9, 0, 5, 12, 3, 2]])
    return embeddings, mixing, table, bias, ids, torch.tensor([5, 7, 9, 12, 40])


@pytest.mark.parametrize("vocabulary_loss", ["chunked", "plain head"])
def test_tied_lookup_and_head_share_one_gradient_equal_to_autograd(vocabulary_loss):
    """Inside TiedLookup the table's one gradient equals autograd's sum of F.embedding's and the head's, whichever
    head reads it; outside, the lookup is the plain one again."""
    embeddings, mixing, table, bias, ids, targets = tied_setup()

    def head(h, head_table):
        if vocabulary_loss == "chunked":
            return chunked_vocabulary_loss(h, head_table, bias, targets, None, 5.0, 1.0, SPECIALS)[0]
        return F.cross_entropy(h @ head_table.t() + bias, targets)

    def loss_with(paired):
        if paired:
            with TiedLookup(embeddings, table) as head_table:
                x = embeddings.lookup(ids, table)
        else:
            head_table, x = table, F.embedding(ids, table, padding_idx=0)
        return head(torch.tanh(x.view(-1, 8)[2:7] @ mixing), head_table) + 0.1 * (x ** 2).sum()

    expected = torch.autograd.grad(loss_with(False), table)[0]
    got = torch.autograd.grad(loss_with(True), table)[0]
    assert torch.allclose(got, expected, atol=1e-6) and expected[0].any()  # the head reaches the padding row
    assert "lookup" not in vars(embeddings)  # restored on exit


def test_tied_lookup_alone_then_with_the_head_gives_autograd_gradients():
    """The lookup backpropagated alone, then the lookup and head together (the head's gradient no longer pending
    for a lookup that already finished): each time autograd's gradient; another table is looked up plainly."""
    embeddings, mixing, table, bias, ids, targets = tied_setup()
    with TiedLookup(embeddings, table) as head_table:
        x = embeddings.lookup(ids, table)
        assert not embeddings.lookup(ids, table.detach()).requires_grad
    lookup_only = torch.autograd.grad(x.pow(2).sum(), table, retain_graph=True)[0]
    assert torch.equal(lookup_only, torch.autograd.grad(F.embedding(ids, table, padding_idx=0).pow(2).sum(), table)[0])

    F.cross_entropy(x.view(-1, 8)[2:7] @ mixing @ head_table.t() + bias, targets).backward()
    reference = table.detach().requires_grad_()
    reference_x = F.embedding(ids, reference, padding_idx=0)
    F.cross_entropy(reference_x.view(-1, 8)[2:7] @ mixing @ reference.t() + bias, targets).backward()
    assert torch.allclose(table.grad, reference.grad, atol=1e-6)
