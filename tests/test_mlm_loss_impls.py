"""Every registered `mlm_loss` implementation against the reference, `eager` (debertav3/objective/losses.py).

On random cases (one slot up to several hundred, slots that pad a row (target -100), a vocabulary that is not a
multiple of the sampling block, temperatures 1 and 0.5, special ids): loss, accuracy, sampled ids and the gradients
of h, E and b; then the whole RTDModel in each sharing mode, selected by `ModelConfig.mlm_loss_impl`. The
reference itself is checked by hand.
"""

import math

import pytest
import torch

from debertav3 import RTDModel, generator_config, preset
from debertav3.model import implementations
from debertav3.objective.losses import eager_vocabulary_loss

FAST_PATHS = [n for n in implementations.NAMES["mlm_loss"] if n != implementations.REFERENCE]
MASK_ID = 999
SPECIALS = (0, 1, 2, 3, MASK_ID)


def implementation(name):
    return implementations.resolve("mlm_loss", name)


def close(got, expected, tolerance=1e-5):
    """Equal to fp32 rounding: every element within `tolerance` times the tensor's largest magnitude."""
    if got.shape != expected.shape or got.dtype != expected.dtype:
        return False
    return expected.numel() == 0 or bool((got - expected).abs().max() <= tolerance * expected.abs().max() + 1e-9)


def is_zero(grad):
    return grad is None or not grad.any()


def test_there_is_a_fast_path_and_auto_picks_it_on_cpu():
    assert FAST_PATHS, "no mlm_loss fast path registered"
    assert implementations.resolve_name("mlm_loss", "auto", "cpu") in FAST_PATHS
    assert implementations.resolve_name("mlm_loss", "auto", "cuda") == implementations.REFERENCE


def test_eager_reference_hand_computed():
    """One row, h = [1, 0], E rows [0, 0], [1, 0], [2, 0], [0, 1], b = 0: logits [0, 1, 2, 0], target 1.
    L = log(1 + e + e^2 + 1) - 1 over denominator 2; argmax 2 != 1; with token 0 special, T = 1 and u = 0.5 the
    draw is the first token whose cdf over e, e^2, 1 reaches half their sum: token 2."""
    h = torch.tensor([[1.0, 0.0]], requires_grad=True)
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss, accuracy, sampled = eager_vocabulary_loss(h.expand(2, 2), table, torch.zeros(4), torch.tensor([1, -100]),
                                                    torch.tensor([0.5, 0.5]), torch.tensor(2.0), 1.0,
                                                    torch.tensor([0]))
    # the second row pads: no loss, not in the accuracy, but a draw like any other
    assert loss.item() == pytest.approx((math.log(2 + math.e + math.e ** 2) - 1) / 2, rel=1e-6)
    assert accuracy.item() == 0.0 and sampled.tolist() == [2, 2]
    loss.backward()  # dL/dh = (sum_v p_v E_v - E_y) / 2
    p = torch.softmax(torch.tensor([0.0, 1.0, 2.0, 0.0]), -1)
    assert torch.allclose(h.grad, (p @ table.detach() - table.detach()[1]) / 2, atol=1e-6)


def random_case(n, v, seed, hidden=16):
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(n, hidden, generator=gen)
    table = 0.5 * torch.randn(v, hidden, generator=gen)
    bias = 0.1 * torch.randn(v, generator=gen)
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[: n // 4] = torch.tensor(SPECIALS[:4]).repeat(n)[: n // 4]  # special tokens can be targets
    targets[n // 4: n // 3] = -100  # slots that pad a row
    uniforms = 1.0 - torch.rand(n, generator=gen)
    specials = torch.tensor([0, 1, 2, 3, v - 1, v + 5])  # one id beyond the vocabulary is ignored
    return states, table, bias, targets, uniforms, specials


def run(name, case, temperature, denominator, loss_weight):
    states, table, bias, targets, uniforms, specials = (t.clone() for t in case)
    leaves = [t.requires_grad_() for t in (states, table, bias)]
    loss, accuracy, sampled = implementation(name)(states, table, bias, targets, uniforms,
                                                   torch.tensor(denominator), temperature, specials)
    (loss_weight * loss).backward()
    return loss.detach(), accuracy, sampled, [t.grad for t in leaves]


def clear_of_boundaries(case, temperature, margin=1e-6):
    """Rows whose uniform is `margin` away from every boundary of the reference cdf (float64), where fp32 rounding
    in the logits cannot decide the draw."""
    states, table, bias, _, uniforms, specials = case
    probs = torch.softmax((states @ table.t() + bias).double() / temperature, -1)
    probs[:, specials[specials < table.shape[0]]] = 0.0
    cdf = probs.cumsum(-1) / probs.sum(-1, keepdim=True)
    return ((cdf - uniforms.double()[:, None]).abs() > margin).all(-1)


@pytest.mark.parametrize("name", FAST_PATHS)
@pytest.mark.parametrize("n,v,temperature,loss_weight", [
    (1, 300, 0.5, 1.0), (37, 300, 1.0, 3.0), (37, 1000, 0.5, 1.0), (300, 513, 1.0, 1.0), (300, 513, 0.5, 0.25)])
def test_fast_path_equals_reference(name, n, v, temperature, loss_weight):
    case = random_case(n, v, seed=n + v)
    denominator = n * 1.5
    loss, accuracy, sampled, grads = run(name, case, temperature, denominator, loss_weight)
    ref_loss, ref_accuracy, ref_sampled, ref_grads = run(implementations.REFERENCE, case, temperature, denominator,
                                                         loss_weight)
    assert torch.allclose(loss, ref_loss, rtol=1e-6, atol=1e-7)
    assert torch.equal(accuracy, ref_accuracy)
    clear = clear_of_boundaries(case, temperature)
    assert clear.float().mean() > 0.9 or n < 10
    assert sampled.shape == (n,) and torch.equal(sampled[clear], ref_sampled[clear])
    assert not torch.isin(sampled, case[5]).any()
    for got, expected, what in zip(grads, ref_grads, ("h", "E", "b")):
        assert close(got, expected), what


def make_pair(sharing, name, seed=0, generator_width=None):
    torch.manual_seed(seed)
    disc = preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, mlm_loss_impl=name)
    return RTDModel(generator_config(disc, hidden_size=generator_width), disc, embedding_sharing=sharing,
                    special_token_ids=SPECIALS)


def make_batch(seed=0, batch=4, length=32):
    gen = torch.Generator().manual_seed(seed)
    original = torch.randint(4, MASK_ID, (batch, length), generator=gen)
    mask = torch.ones_like(original)
    original[:, 0], original[:, -1] = 1, 2
    mask[-1, -8:], original[-1, -8:] = 0, 0  # padding: the lookup's padding row takes no gradient
    selected = (original > 3) & mask.bool() & (torch.rand(original.shape, generator=gen) < 0.15)
    selected[:, 1] = True
    labels = torch.where(selected, original, torch.full_like(original, -100))
    return original.masked_fill(selected, MASK_ID), mask, labels


def gradients(model, loss_name, batch):
    model.zero_grad(set_to_none=True)
    out = model(*batch, generator=torch.Generator().manual_seed(5))
    getattr(out, loss_name).backward()
    return out, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", FAST_PATHS)
@pytest.mark.parametrize("sharing", ["es", "nes", "gdes"])
@pytest.mark.parametrize("generator_width", [None, 32])  # 32: a generator narrower than the shared table
def test_rtd_model_gradients_equal_between_reference_and_fast_path(name, sharing, generator_width):
    batch = make_batch()
    reference = make_pair(sharing, implementations.REFERENCE, generator_width=generator_width)
    fast = make_pair(sharing, name, generator_width=generator_width)
    ref_out, ref_grads = gradients(reference, "loss", batch)
    out, grads = gradients(fast, "loss", batch)
    assert torch.equal(out.discriminator_input_ids, ref_out.discriminator_input_ids)
    assert torch.allclose(out.loss, ref_out.loss, rtol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for n, expected in ref_grads.items():
        assert expected is not None, n
        assert close(grads[n], expected), n


@pytest.mark.parametrize("name", [implementations.REFERENCE] + FAST_PATHS)
def test_gdes_rtd_gradient_reaches_only_the_delta(name):
    model, batch = make_pair("gdes", name), make_batch()
    gradients(model, "rtd_loss", batch)
    assert is_zero(model.generator_embedding.grad) and not is_zero(model.embedding_delta.grad)
    gradients(model, "mlm_loss", batch)
    assert not is_zero(model.generator_embedding.grad) and is_zero(model.embedding_delta.grad)


def test_config_selects_the_implementation():
    """The reference keeps an ordinary autograd graph (a second backward works); the chunked fast path forms its
    gradients in forward and refuses one."""
    batch = make_batch()
    reference_loss = make_pair("gdes", implementations.REFERENCE)(*batch).mlm_loss
    reference_loss.backward(retain_graph=True)
    reference_loss.backward()
    chunked_loss = make_pair("gdes", "chunked")(*batch).mlm_loss
    chunked_loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already backpropagated"):
        chunked_loss.backward()


def test_chunks_of_a_few_rows_equal_one_chunk():
    """The chunked step's rows in chunks of 7 (37 slots, some padding a row) against the reference: the loop over
    chunks accumulates the loss, the accuracy and the table's gradient."""
    from debertav3.ops.mlm_loss import chunked_vocabulary_loss

    case = random_case(37, 300, seed=3)
    results = []
    for chunk_bytes in (4 * 300 * 7, None):
        states, table, bias, targets, uniforms, specials = (t.clone() for t in case)
        leaves = [t.requires_grad_() for t in (states, table, bias)]
        args = (states, table, bias, targets, uniforms, torch.tensor(30.0), 1.0, specials)
        loss, accuracy, sampled = (chunked_vocabulary_loss(*args, chunk_bytes=chunk_bytes) if chunk_bytes
                                   else eager_vocabulary_loss(*args))
        loss.backward()
        results.append((loss.detach(), accuracy, sampled, [t.grad for t in leaves]))
    (loss, accuracy, sampled, grads), (ref_loss, ref_accuracy, ref_sampled, ref_grads) = results
    assert torch.allclose(loss, ref_loss, rtol=1e-6) and torch.equal(accuracy, ref_accuracy)
    clear = clear_of_boundaries(case, 1.0)
    assert torch.equal(sampled[clear], ref_sampled[clear])
    assert all(close(got, expected) for got, expected in zip(grads, ref_grads))
