"""Token permutation ops: dispatch rows to their experts and combine them back.

See docs/design.md, "Permutation". Registers autograd for ``torch.ops.pesc.{permute, unpermute}``
(validation and the fake implementations live with the kernels, ``csrc/permute/ops.cpp``). The two
ops are adjoint row movements, so their backward passes are ops too:

- permute's backward ``grad_x[t] = sum_j grad_x_perm[row_map[t, j]]`` is exactly
  ``torch.ops.pesc.unpermute(grad_x_perm, row_map)`` (no weights, no residual);
- unpermute's backward is ``torch.ops.pesc.unpermute_backward(grad_y, row_map, weights, y_perm)``,
  which scatters ``weights[t, j] * grad_y[t]`` to ``grad_y_perm[row_map[t, j]]`` and, when ``y_perm``
  is given (only when the weights need a gradient), also returns
  ``grad_weights[t, j] = <grad_y[t], y_perm[row_map[t, j]]>`` accumulated in float32 and returned
  in the weights' dtype (else an empty ``[0]`` placeholder). The residual's gradient is ``grad_y``.

Dropped slots (``permute(..., drop_invalid=True)`` and an id outside ``[0, E)``, as expert-parallel
code marks slots owned by other ranks) go to no expert: they sort after the last expert, so
``expert_offsets[E]`` counts the kept slots only and ``x_perm[offsets[E]:]`` is zero; ``row_map``
holds ``~row`` (a negative value) for them; every op skips them, so they add nothing and receive
zero gradient. Every shape still follows from the input shapes alone (no host sync on CUDA).
"""
from __future__ import annotations

import torch

from .. import _library, reference


def permute(x: torch.Tensor, indices: torch.Tensor, num_experts: int, drop_invalid: bool = False):
    """Stable counting sort of routed rows by expert (the MoE dispatch).

    Args:
        x: ``[T, d]`` token rows (float32/float16/bfloat16).
        indices: ``[T, k]`` int32 or int64 expert ids in ``[0, num_experts)``, k >= 1 (e.g. from
            :func:`topk_gating`, or a Hugging Face router's int64 ids).
        num_experts: E, 1 <= E <= 1024. Experts may receive no rows.
        drop_invalid: drop slots whose id is outside ``[0, E)`` instead of treating it as an error
            (see "Dropped slots" above); identical on CPU and CUDA.

    Returns:
        ``x_perm [N, d]`` (N = T*k, dtype of x), ``row_map [T, k]`` int32 with
        ``x_perm[row_map[t, j]] = x[t]``, and ``expert_offsets [E+1]`` int64 such that expert e's rows
        are ``x_perm[offsets[e]:offsets[e+1]]``, in (t, j) row-major order (``offsets[0] = 0``,
        ``offsets[E] = N``). ``row_map`` is a permutation of ``[0, N)``. Gradient flows to x: the sum
        of its k copies, accumulated in float32. On CUDA nothing synchronises with the host:
        ``expert_offsets`` stays on the device.

    With ``drop_invalid``, dropped slots sort after expert E-1: ``offsets[E]`` is the number of kept
    slots, ``x_perm[offsets[E]:]`` is zero and ``row_map`` holds ``~row < 0`` for each dropped slot.

    Invalid ids without ``drop_invalid``: on CPU an id outside ``[0, E)`` raises an IndexError naming
    the value and its position. CUDA cannot check without a host sync, so there an id below 0 is
    treated as expert 0 and an id >= E as expert E-1; the outputs remain a valid permutation with
    ``offsets[E] = N``, so nothing downstream reads out of bounds.
    """
    if _library.use_kernel("permute", x.device):
        return torch.ops.pesc.permute(x, indices, num_experts, drop_invalid)
    return _library.fallback("permute", (x, indices, num_experts, drop_invalid), reference.permute)


def unpermute(y_perm: torch.Tensor, row_map: torch.Tensor, weights: torch.Tensor | None = None,
              residual: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted combine (the MoE gather): ``y[t] = residual[t] + sum_j weights[t, j] * y_perm[row_map[t, j]]``.

    Args:
        y_perm: ``[N, d]`` expert outputs in permuted order (float32/float16/bfloat16), N = T*k.
        row_map: ``[T, k]`` int32 from :func:`permute` (a permutation of ``[0, N)``, where a
            dropped slot's entry ``~row`` counts as ``row``; dropped slots add nothing).
        weights: optional ``[T, k]`` routing weights, float32/float16/bfloat16 whatever the dtype of
            y_perm (read as float32; treated as 1 when None).
        residual: optional ``[T, d]`` added to the result (e.g. the shared FFN output), dtype of y_perm.

    Returns ``y [T, d]`` in y_perm's dtype, accumulated in float32 (the k terms in j order, then the
    residual). Gradients flow to y_perm (in its dtype; zero on dropped slots' rows), weights (in their
    dtype, one float32 dot product per (t, j), zero for dropped slots) and residual. Every output
    row has one writer in both directions: no atomics, the same bits for any thread count.

    A row_map that is not a permutation of ``[0, N)`` raises on CPU (naming the entry). On CUDA it is
    not checked (that would need a host sync): entries outside ``[0, N)`` are skipped, so nothing is
    read or written out of bounds, and the results for such a row_map are unspecified.
    """
    if _library.use_kernel("unpermute", y_perm.device):
        return torch.ops.pesc.unpermute(y_perm, row_map, weights, residual)
    return _library.fallback("unpermute", (y_perm, row_map, weights, residual), reference.unpermute)


def _register() -> None:
    lib = "pesc::"

    def permute_setup(ctx, inputs, output):
        _x_perm, row_map, _offsets = output
        ctx.save_for_backward(row_map)

    def permute_backward(ctx, grad_x_perm, _grad_row_map, _grad_offsets):
        (row_map,) = ctx.saved_tensors
        return torch.ops.pesc.unpermute(grad_x_perm, row_map, None, None), None, None, None

    torch.library.register_autograd(lib + "permute", permute_backward, setup_context=permute_setup)

    def unpermute_setup(ctx, inputs, output):
        y_perm, row_map, weights, residual = inputs
        # needs_input_grad has no entry for trailing arguments left at their default (None), so
        # each index is read only when that argument is present.
        ctx.weights_grad = weights is not None and ctx.needs_input_grad[2]
        ctx.residual_grad = residual is not None and ctx.needs_input_grad[3]
        # y_perm is only read back for the weights' gradient, so it is saved only then.
        ctx.save_for_backward(row_map, weights, y_perm if ctx.weights_grad else None)

    def unpermute_backward(ctx, grad_y):
        row_map, weights, y_perm = ctx.saved_tensors
        grad_y_perm, grad_weights = torch.ops.pesc.unpermute_backward(grad_y, row_map, weights, y_perm)
        return (grad_y_perm, None, grad_weights if ctx.weights_grad else None,
                grad_y if ctx.residual_grad else None)

    torch.library.register_autograd(lib + "unpermute", unpermute_backward, setup_context=unpermute_setup)


if _library.extension_loaded():
    _register()
