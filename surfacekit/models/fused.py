"""A hand-written forward and backward pass for populations of plain MLPs: the trainer's fused step.

Backpropagation (Rumelhart, Hinton & Williams 1986) written out for stacked parameters [K, ...]:
with layer inputs h_0 = x, h_i = phi(z_i), z_i = h_{i-1} W_i^T + b_i, and g_i = dL/dz_i [K, B, out_i],

    dL/dW_i = g_i^T h_{i-1}   [K, out, in]  (one batched GEMM, already in the stored layout)
    dL/db_i = sum_b g_i       [K, out]
    g_{i-1} = (g_i W_i) * phi'(z_{i-1})  (phi' from the activation's output, in place)

and the output gradient of the losses in one pass: cross-entropy softmax(o) - onehot(y), mean squared
error 2 (o - t), each divided by B (the loss of a member is the mean over its minibatch).

Why not autograd: for the small layers of a population step, the graph costs as much as the
arithmetic. Autograd computes the weight gradient in the transposed layout h^T g and copies it into
[K, out, in], runs the loss's backward as a chain of element-wise kernels (logsumexp, gather, mean)
and keeps one node per operation. This path does the same products with no copies and fuses the
loss's gradient into its forward pass (``benchmarks/population.py`` measures both side by side).
The results are autograd's to rounding (tested in float64 against ``torch.autograd``); the element-wise
activation backward is autograd's own kernel (``aten::threshold_backward``, ``tanh_backward``,
``sigmoid_backward``), so those steps are bit-identical.

Covered (:func:`supported`): :class:`MLPSpec` without batch norm, residual connections or maxout, with
or without biases, any depth and widths, activations relu, tanh, sigmoid, linear; losses
cross_entropy and mse (class labels or regression targets). Anything else (batch norm, residual,
maxout, hinge, module populations) is the trainer's autograd path.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import torch

from surfacekit.models.activations import ACTIVATIONS, ACTIVATIONS_INPLACE
from surfacekit.models.architecture import Spec
from surfacekit.models.mlp import MLPSpec, affine, param_name

FUSED_LOSSES = ("cross_entropy", "mse")


class Tape(NamedTuple):
    """What the backward pass needs from the forward pass.

    inputs: the input of every layer, h_0 = x ([K, B, in] or [B, in] shared) and the hidden layers'
    outputs h_1 .. h_{L-1} [K, B, width]; output_grad: d(member loss)/d(outputs) [K, B, C] of every
    member's mean loss over its minibatch.
    """

    inputs: list[torch.Tensor]
    output_grad: torch.Tensor


def supported(spec: Spec, loss: str) -> bool:
    """Whether :func:`forward` / :func:`gradients` cover this network and loss (see the module docstring)."""
    return (isinstance(spec, MLPSpec) and not spec.batch_norm and not spec.residual
            and spec.activation in ACTIVATIONS and loss in FUSED_LOSSES)


def loss_and_gradient(outputs: torch.Tensor, targets: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Member losses [K] (the mean over the batch, as ``losses.member_losses``) and their gradient with
    respect to ``outputs`` [K, B, C], in one pass.

    targets: class labels [B] or [K, B] (both losses), or regression targets [B, C] / [K, B, C] (mse).
    cross_entropy: L = mean_b (logsumexp(o_b) - o_{b, y_b}); dL/do_b = (softmax(o_b) - onehot(y_b)) / B.
    mse: L = mean_b |o_b - t_b|^2; dL/do_b = 2 (o_b - t_b) / B. Cost: a few passes over [K, B, C].

    Raises:
        ValueError: a loss not in ``FUSED_LOSSES``, or cross_entropy given regression targets.
    """
    batch = outputs.shape[-2]
    labels = targets.dtype in (torch.int64, torch.int32)
    if labels:
        targets = targets.expand(outputs.shape[:-1])
    if loss == "cross_entropy":
        if not labels:
            raise ValueError("loss=cross_entropy needs class labels; use loss=mse for regression targets")
        index = targets.unsqueeze(-1)
        lse = torch.logsumexp(outputs, dim=-1, keepdim=True)
        losses = (lse - outputs.gather(-1, index)).squeeze(-1).mean(dim=-1)
        grad = (outputs - lse).exp_()
        grad.scatter_add_(-1, index, torch.full_like(index, -1, dtype=grad.dtype)).div_(batch)
        return losses, grad
    if loss == "mse":
        goal = torch.nn.functional.one_hot(targets, outputs.shape[-1]).to(outputs.dtype) if labels else targets
        residual = outputs - goal
        return residual.pow(2).sum(dim=-1).mean(dim=-1), residual.mul_(2.0 / batch)
    raise ValueError(f"model.loss={loss!r} has no fused gradient; choose one of {list(FUSED_LOSSES)}")


@torch.no_grad()
def forward(spec: MLPSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, targets: torch.Tensor,
            loss: str) -> tuple[torch.Tensor, Tape]:
    """Member losses [K] of inputs x ([K, B, in] per member, or [B, in] shared) and the :class:`Tape`
    for :func:`gradients`. Cost: the forward products (2 K B sum_i in_i out_i flops) and the loss.

    Raises:
        ValueError: a network or loss that :func:`supported` refuses (use autograd for those).
    """
    if not supported(spec, loss):
        raise ValueError(f"the fused step covers plain MLPs (no batch norm, residual or maxout) with losses "
                         f"{list(FUSED_LOSSES)}; got {spec!r} with loss={loss!r}")
    inputs = [x]
    h = x
    for i in range(spec.num_layers):
        z = affine(spec, params, i, h)
        if i == spec.num_layers - 1:
            losses, output_grad = loss_and_gradient(z, targets, loss)
            return losses, Tape(inputs, output_grad)
        h = ACTIVATIONS_INPLACE[spec.activation](z)  # z is a fresh tensor here
        inputs.append(h)
    raise AssertionError("unreachable: a network has at least one layer")


def _activation_backward(activation: str, grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """grad * phi'(z) from the activation's output, with autograd's own kernels (bit-identical to it)."""
    if activation == "relu":
        return torch.ops.aten.threshold_backward(grad, output, 0)
    if activation == "tanh":
        return torch.ops.aten.tanh_backward(grad, output)
    if activation == "sigmoid":
        return torch.ops.aten.sigmoid_backward(grad, output)
    return grad  # linear


@torch.no_grad()
def gradients(spec: MLPSpec, params: Mapping[str, torch.Tensor], tape: Tape,
              weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The gradients [K, ...] of sum_k w_k L_k (``weights`` w [K]; None: all ones) by name of ``params``.

    The output gradient of a member of weight 0 is exact zeros, even where its outputs are not finite
    (a diverged member); as with autograd, its gradients below a non-finite weight can be NaN (0 * inf).
    Cost: the backward products, 2 K B (out_0 in_0 + 2 sum_{i>0} in_i out_i) flops; no gradient of x.
    """
    grad = tape.output_grad
    if weights is not None:
        grad = torch.where(weights.reshape(-1, 1, 1) != 0, grad * weights.reshape(-1, 1, 1).to(grad), 0.0)
    out: dict[str, torch.Tensor] = {}
    for i in reversed(range(spec.num_layers)):
        h = tape.inputs[i]
        out[param_name(i, "weight")] = torch.matmul(grad.transpose(-1, -2), h)
        if spec.bias:
            out[param_name(i, "bias")] = grad.sum(dim=-2)
        if i > 0:
            grad = _activation_backward(spec.activation, torch.bmm(grad, params[param_name(i, "weight")]), h)
    return {name: out[name] for name in params}
