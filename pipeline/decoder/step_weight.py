"""A weight a recurrence applies at every step, its gradient formed once for all the steps.

Autograd forms the gradient of a weight used at each of T steps as T products over each step's
few rows (an (out, n) @ (n, in) product with n = the batch) and adds each into a full-size
buffer: T inefficient products and T full-size additions. `StepWeight` instead keeps each
step's input and output gradient as its backward passes and forms the weight's gradient in one
(out, N) @ (N, in) product over the N rows of every step, after the last of them. The same
gradient, summed in another order. For eager autograd only (the backward keeps Python state):
the LSTM's training passes use it, except when `torch.compile` traces the static step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype products with `tensor` run in: autocast's when it is on for its device."""
    kind = tensor.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else tensor.dtype


def in_autocast_dtype(tensor: Tensor) -> Tensor:
    """`tensor` in the autocast dtype when autocast is on for its device (else unchanged): one
    cast for the whole loop, where every step's operation would cast it again."""
    return tensor.to(compute_dtype(tensor))


class StepWeight:
    """`x -> x @ weight.T + bias` for every step of one forward pass; with `deferred` (and
    gradients on) the weight's gradient is formed once, after every step's backward.

    Build one per forward pass (it holds that pass's step inputs until its backward).
    weight (out, in), bias (out,) or None.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, deferred: bool = True):
        self._inputs: list[Tensor] = []  # each (n, in): a step's input
        self._grads: list[Tensor] = []  # each (n, out): its output's gradient
        self.deferred = deferred and torch.is_grad_enabled() and weight.requires_grad
        if not self.deferred:  # F.linear as it is: autocast casts (and caches) the weight itself
            self.weight, self.bias = weight, bias
            return
        self.weight = _AllSteps.apply(weight, self, compute_dtype(weight))
        self.bias = None if bias is None else in_autocast_dtype(bias)

    def __call__(self, x: Tensor) -> Tensor:
        """(n, in) -> (n, out)."""
        if not self.deferred:
            return F.linear(x, self.weight, self.bias)
        out = _OneStep.apply(x, self.weight, self)
        return out if self.bias is None else out + self.bias

    def keep(self, grad: Tensor, x: Tensor) -> None:
        """A step's output gradient (n, out) and input (n, in), from its backward."""
        self._grads.append(grad)
        self._inputs.append(x)

    def weight_grad(self) -> Tensor | None:
        """(out, in): Σ over the kept steps of grad.T @ x, in one product; forgets them. In
        float32 when the steps ran in float16, whose range the sum can exceed where no step's
        share did (a GradScaler's scaled gradients)."""
        if not self._grads:
            return None
        grads, inputs = torch.cat(self._grads), torch.cat(self._inputs)  # (N, out), (N, in)
        if grads.dtype == torch.float16:
            grads, inputs = grads.float(), inputs.float()
        with torch.autocast(grads.device.type, enabled=False):  # a backward inside autocast
            grad = grads.T @ inputs  # (out, N) @ (N, in)
        self._grads.clear()
        self._inputs.clear()
        return grad


class _OneStep(torch.autograd.Function):
    """x @ weight.T; its backward gives x its gradient and hands (grad, x) to the owner."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, owner: StepWeight) -> Tensor:
        ctx.owner, ctx.x_dtype = owner, x.dtype
        x = x.to(weight.dtype)  # (n, in)
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight)  # (n, out)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype)  # (n, out)
        ctx.owner.keep(grad, x)
        return (grad @ weight).to(ctx.x_dtype), None, None  # the weight's: `_AllSteps`


class _AllSteps(torch.autograd.Function):
    """The weight in the steps' dtype. Every step's product takes this output, so autograd
    runs this backward after all of theirs: there the weight's gradient is formed, once."""

    @staticmethod
    def forward(ctx, weight: Tensor, owner: StepWeight, dtype: torch.dtype) -> Tensor:
        ctx.owner, ctx.weight_dtype = owner, weight.dtype
        ctx.set_materialize_grads(False)  # the steps pass None: no zero-filled weight
        return weight.view_as(weight) if dtype == weight.dtype else weight.to(dtype)

    @staticmethod
    def backward(ctx, grad: Tensor | None):
        total = ctx.owner.weight_grad()
        if grad is not None:
            total = grad if total is None else total + grad
        return None if total is None else total.to(ctx.weight_dtype), None, None
