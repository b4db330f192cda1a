"""nn.Linear into and out of the head-major layout [H, N, D] that the CPU attention kernel works in.

    split:  y_h = x W_h^T + b_h             W_h = rows hD..(h+1)D of W   (query, key and value projections)
    merge:  y = sum_h c_h W_:,h^T + b       W_:,h = columns hD..(h+1)D of W   (the attention output projection)

The plain route is a Linear on [N, H*D] followed by a permuted copy into [H, N, D] (and one back before the output
projection), plus the same two copies of the gradients in backward: eight [N, H*D] passes per layer. Here each head
is its own matrix product, so the layout change costs nothing: `x` enters every head's product through a
stride-0 batch dimension, and the merge sums the heads' products into one output.

Both read a Linear's weight and bias directly instead of calling the module, which is only the same computation
for a plain `nn.Linear` with no hooks: `direct_weight_blocker` says when it is not.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module

_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def direct_weight_blocker(name: str, linear: nn.Module) -> str | None:
    """Why reading `linear.weight` would not equal calling `linear` (one line naming `name`), or None.

    It would not for a subclass or wrapper (an adapter, a parametrization: anything but `nn.Linear` itself) and
    for a module with hooks of its own or with global module hooks (`register_module_forward_hook` and kin).
    """
    if type(linear) is not nn.Linear:
        return f"{name} is a {type(linear).__name__}, not a plain nn.Linear"
    # Spelled out rather than looped over _HOOKS: this runs for every projection of every layer call.
    if linear._forward_hooks or linear._forward_pre_hooks or linear._backward_hooks or linear._backward_pre_hooks:
        return f"{name} has {', '.join(kind.strip('_') for kind in _HOOKS if getattr(linear, kind))}"
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks or _module._global_backward_hooks
            or _module._global_backward_pre_hooks):
        registered = (kind.strip("_") for kind in _GLOBAL_HOOKS if getattr(_module, kind))
        return f"global module hooks are registered ({', '.join(registered)})"
    return None


class SplitHeads(torch.autograd.Function):
    """`F.linear(x, weight, bias)` [N, H*D] returned as [H, N, D]; x [N, X], weight [H*D, X], bias [H*D]."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x_NX, weight, bias, heads: int):
        N, X = x_NX.shape
        weight_HDX = weight.view(heads, -1, X)
        ctx.save_for_backward(x_NX, weight)
        return torch.baddbmm(bias.view(heads, 1, -1), x_NX.expand(heads, N, X), weight_HDX.transpose(1, 2))

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_HND):
        x_NX, weight = ctx.saved_tensors
        H, N, D = grad_HND.shape
        weight_HDX = weight.view(H, D, -1)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(grad_HND[0], weight_HDX[0])
            for h in range(1, H):
                grad_x.addmm_(grad_HND[h], weight_HDX[h])
        if ctx.needs_input_grad[1]:  # [H, D, X] is the weight's own layout
            grad_w = torch.bmm(grad_HND.transpose(1, 2), x_NX.expand(H, N, x_NX.shape[1])).view(weight.shape)
        if ctx.needs_input_grad[2]:
            grad_b = grad_HND.sum(1).view(-1)
        return grad_x, grad_w, grad_b, None


class MergeHeads(torch.autograd.Function):
    """`F.linear(c, weight, bias)` for c [H, N, D] read as [N, H*D] (head h in columns hD..(h+1)D); weight
    [Y, H*D], bias [Y]; returns [N, Y]."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, c_HND, weight, bias):
        H, N, D = c_HND.shape
        weight_YHD = weight.view(-1, H, D)
        ctx.save_for_backward(c_HND, weight)
        out = torch.addmm(bias, c_HND[0], weight_YHD[:, 0].t())
        for h in range(1, H):
            out.addmm_(c_HND[h], weight_YHD[:, h].t())
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_NY):
        c_HND, weight = ctx.saved_tensors
        H, N, D = c_HND.shape
        Y = weight.shape[0]
        grad_c = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # [H, Y, D] view of the weight: each head's [Y, D] block, row stride H*D
            grad_c = torch.bmm(grad_NY.expand(H, N, Y), weight.view(Y, H, D).transpose(0, 1))
        if ctx.needs_input_grad[1]:
            grad_w_HDY = torch.bmm(c_HND.transpose(1, 2), grad_NY.expand(H, N, Y))
            grad_w = grad_w_HDY.permute(2, 0, 1).reshape(Y, H * D)
        if ctx.needs_input_grad[2]:
            grad_b = grad_NY.sum(0)
        return grad_c, grad_w, grad_b


def project_heads(linear: nn.Linear, x_BLX: torch.Tensor, heads: int) -> torch.Tensor:
    """linear(x) [B, L, H*D] as contiguous head-major [H, B, L, D], without a permuted copy (`SplitHeads`)."""
    B, L, X = x_BLX.shape
    split = SplitHeads.apply(x_BLX.reshape(B * L, X), linear.weight, linear.bias, heads)
    return split.view(heads, B, L, -1)


def merge_project(context_HBLD: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """linear(heads merged) [B, L, Y] of head-major context [H, B, L, D], without the merged copy (`MergeHeads`)."""
    H, B, L, D = context_HBLD.shape
    return MergeHeads.apply(context_HBLD.reshape(H, B * L, D), linear.weight, linear.bias).view(B, L, -1)
