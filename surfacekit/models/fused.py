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
and keeps one node per operation. This path does the same products with no copies, computes the
loss's gradient in its forward pass, stores the outputs classes first ([K, C, B]: faster products
and reductions for few outputs, :func:`loss_and_gradient`) and writes into the last step's buffers
(:class:`Tape`); ``benchmarks/population.py`` measures it against autograd side by side.
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
from surfacekit.models.mlp import MLPSpec, param_name
from surfacekit.population import gather_rows

FUSED_LOSSES = ("cross_entropy", "mse")


class Tape(NamedTuple):
    """What the backward pass needs from the forward pass, and the buffers both write into.

    inputs: the input of every layer, h_0 = x ([K, B, in] or [B, in] shared) and the hidden layers'
    outputs h_1 .. h_{L-1} [K, B, width]; outputs: the network's outputs [K, B, C]; output_grad:
    d(member loss)/d(outputs) [K, B, C] of every member's mean loss over its minibatch (both stored
    classes first, as [K, C, B] transposed: see :func:`loss_and_gradient`); hidden_grads: the
    backward's buffers for dL/dz of the hidden layers [K, B, width]; grads: the buffers
    :func:`gradients` fills and returns, by parameter name;
    rows: the minibatch's inputs [K, B, in] gathered by ``index`` (None without one).
    A tape passed back to :func:`forward` (``reuse=``) lends it all these buffers: the next step
    overwrites them instead of allocating, which spares the page faults of fresh memory (on Linux,
    glibc returns large freed blocks to the system; touching fresh memory again cost about 800 page
    faults and a fifth of a step, in system time, for the benchmark's population).
    """

    inputs: list[torch.Tensor]
    outputs: torch.Tensor
    output_grad: torch.Tensor
    hidden_grads: list[torch.Tensor]
    grads: dict[str, torch.Tensor]
    rows: torch.Tensor | None


def _buffer(old: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """``old`` where it has this shape, dtype and device, else a new uninitialised tensor."""
    if old is not None and old.shape == shape and old.dtype == like.dtype and old.device == like.device:
        return old
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def supported(spec: Spec, loss: str) -> bool:
    """Whether :func:`forward` / :func:`gradients` cover this network and loss (see the module docstring)."""
    return (isinstance(spec, MLPSpec) and not spec.batch_norm and not spec.residual
            and spec.activation in ACTIVATIONS and loss in FUSED_LOSSES)


def loss_and_gradient(outputs_t: torch.Tensor, targets: torch.Tensor, loss: str,
                      out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Member losses [K] (the mean over the batch, as ``losses.member_losses``) and their gradient with
    respect to the outputs, in one pass, both from the outputs transposed: ``outputs_t`` [K, C, B].

    Classes first because torch's CPU kernels reduce over a short axis fastest when it is not the
    contiguous one: ``log_softmax`` over C of [64, 10, 128] took 0.2 ms against 0.3 ms for
    ``outputs - logsumexp`` and 1.4 ms for ``log_softmax`` over the last axis of [64, 128, 10] (one thread).
    targets: class labels [B] or [K, B] (both losses), or regression targets [B, C] / [K, B, C] (mse).
    cross_entropy: L = -mean_b log softmax(o_b)_{y_b}; dL/do_b = (softmax(o_b) - onehot(y_b)) / B.
    mse: L = mean_b |o_b - t_b|^2; dL/do_b = 2 (o_b - t_b) / B. Returns the gradient [K, C, B], written
    into ``out`` (a buffer of that shape, not ``outputs_t`` itself) when given. Cost: a few passes over
    [K, C, B].

    Raises:
        ValueError: a loss not in ``FUSED_LOSSES``, or cross_entropy given regression targets.
    """
    batch = outputs_t.shape[-1]
    labels = targets.dtype in (torch.int64, torch.int32)
    if labels:
        targets = targets.expand(outputs_t.shape[0], batch)
    if loss == "cross_entropy":
        if not labels:
            raise ValueError("loss=cross_entropy needs class labels; use loss=mse for regression targets")
        index = targets.unsqueeze(1)
        log_p = torch.log_softmax(outputs_t, dim=1) if out is None else torch.log_softmax(outputs_t, 1, out=out)
        losses = log_p.gather(1, index).squeeze(1).mean(dim=-1).neg_()
        grad = log_p.exp_()
        grad.scatter_add_(1, index, torch.full_like(index, -1, dtype=grad.dtype)).div_(batch)
        return losses, grad
    if loss == "mse":
        goal = torch.nn.functional.one_hot(targets, outputs_t.shape[1]).to(outputs_t.dtype) if labels else targets
        residual = torch.sub(outputs_t, goal.transpose(-1, -2), out=out)
        return residual.pow(2).sum(dim=1).mean(dim=-1), residual.mul_(2.0 / batch)
    raise ValueError(f"model.loss={loss!r} has no fused gradient; choose one of {list(FUSED_LOSSES)}")


@torch.no_grad()
def forward(spec: MLPSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, targets: torch.Tensor,
            loss: str, index: torch.Tensor | None = None, reuse: Tape | None = None) -> tuple[torch.Tensor, Tape]:
    """Member losses [K] of inputs x ([K, B, in] per member, or [B, in] shared) and the :class:`Tape`
    for :func:`gradients`. Cost: the forward products (2 K B sum_i in_i out_i flops) and the loss.

    index: a minibatch index [K, B] into the rows of x [N, in] and targets (``population.gather_rows``);
    the inputs are gathered into a buffer of the tape. reuse: the previous step's tape, whose buffers
    this step overwrites where the shapes agree (that tape and the gradients it returned are then invalid).

    Raises:
        ValueError: a network or loss that :func:`supported` refuses (use autograd for those), or
            cross_entropy with regression targets.
        IndexError: an index outside the rows of x.
    """
    if not supported(spec, loss):
        raise ValueError(f"the fused step covers plain MLPs (no batch norm, residual or maxout) with losses "
                         f"{list(FUSED_LOSSES)}; got {spec!r} with loss={loss!r}")
    old = reuse or Tape([], None, None, [], {}, None)
    k = params[param_name(0, "weight")].shape[0]
    rows = None
    if index is not None:
        index = index.contiguous()  # a minibatch is a column slice of the epoch's orders: one copy, not two
        rows = gather_rows(x, index, out=_buffer(old.rows, (*index.shape, *x.shape[1:]), x))
        x, targets = rows, gather_rows(targets, index)
    batch = x.shape[-2]
    inputs, hidden_grads = [x], []
    h = x.expand(k, -1, -1)
    for i in range(spec.num_layers - 1):
        weight = params[param_name(i, "weight")]
        z = _buffer(old.inputs[i + 1] if i + 1 < len(old.inputs) else None, (k, batch, weight.shape[1]), x)
        if spec.bias:
            torch.baddbmm(params[param_name(i, "bias")].unsqueeze(1), h, weight.transpose(1, 2), out=z)
        else:
            torch.bmm(h, weight.transpose(1, 2), out=z)
        h = ACTIVATIONS_INPLACE[spec.activation](z)
        inputs.append(h)
        hidden_grads.append(_buffer(old.hidden_grads[i] if i < len(old.hidden_grads) else None, z.shape, z))
    # The outputs as their transpose [K, C, B] = W h^T + b: for few outputs, 2.4 times faster than h W^T
    # (MKL, [64, 128, 100] x [64, 100, 10], one thread), and the loss's reductions faster (loss_and_gradient).
    last = spec.num_layers - 1
    weight = params[param_name(last, "weight")]
    shape = (k, weight.shape[1], batch)
    outputs_t = _buffer(None if old.outputs is None else old.outputs.transpose(1, 2), shape, x)
    grad_t = _buffer(None if old.output_grad is None else old.output_grad.transpose(1, 2), shape, x)
    if spec.bias:
        torch.baddbmm(params[param_name(last, "bias")].unsqueeze(2), weight, h.transpose(1, 2), out=outputs_t)
    else:
        torch.bmm(weight, h.transpose(1, 2), out=outputs_t)
    losses, grad_t = loss_and_gradient(outputs_t, targets, loss, out=grad_t)
    grads = {name: _buffer(old.grads.get(name), p.shape, p) for name, p in params.items()}
    return losses, Tape(inputs, outputs_t.transpose(1, 2), grad_t.transpose(1, 2), hidden_grads, grads, rows)


def _activation_backward(activation: str, grad: torch.Tensor, output: torch.Tensor) -> None:
    """grad <- grad * phi'(z) from the activation's output, in place, with autograd's own kernels (so
    bit-identical to it)."""
    if activation == "relu":
        torch.ops.aten.threshold_backward.grad_input(grad, output, 0, grad_input=grad)
    elif activation == "tanh":
        torch.ops.aten.tanh_backward.grad_input(grad, output, grad_input=grad)
    elif activation == "sigmoid":
        torch.ops.aten.sigmoid_backward.grad_input(grad, output, grad_input=grad)


@torch.no_grad()
def gradients(spec: MLPSpec, params: Mapping[str, torch.Tensor], tape: Tape,
              weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The gradients [K, ...] of sum_k w_k L_k (``weights`` w [K]; None: all ones) by name of ``params``:
    the tape's ``grads`` buffers, filled (once per tape: the output gradient is scaled in place).

    The output gradient of a member of weight 0 is exact zeros, even where its outputs are not finite
    (a diverged member); as with autograd, its gradients below a non-finite weight can be NaN (0 * inf).
    Cost: the backward products, 2 K B (out_0 in_0 + 2 sum_{i>0} in_i out_i) flops; no gradient of x.
    """
    grad = tape.output_grad
    if weights is not None and not bool((weights == 1).all()):  # all ones, the usual case: no pass needed
        scale = weights.reshape(-1, 1, 1)
        grad.mul_(scale.to(grad)).masked_fill_(scale == 0, 0.0)
    for i in reversed(range(spec.num_layers)):
        h = tape.inputs[i]
        torch.matmul(grad.transpose(-1, -2), h, out=tape.grads[param_name(i, "weight")])
        if spec.bias:
            torch.sum(grad, dim=-2, out=tape.grads[param_name(i, "bias")])
        if i > 0:
            grad = torch.bmm(grad, params[param_name(i, "weight")], out=tape.hidden_grads[i - 1])
            _activation_backward(spec.activation, grad, h)
    return tape.grads
