"""Which ops a channel gather commutes with, and how.

A channel permutation is carried as a *pending gather*: ``v = take(base, idx, axis)``, i.e.
``v[..., k, ...] = base[..., idx[k], ...]``. :func:`push_gather` moves such a gather from an
op's input to its output, rewriting the op's constant operands (a bias, a layer-norm gamma) so
that ``op(take(base, idx)) == take(op'(base), idx')``. Both TetrisPrune (to plan permutations
that cost nothing at run time) and FoldPermutations (to remove the gathers) use these rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import relax

from ._dataflow import op_name

__all__ = ["Gather", "push_gather", "UNARY_OPS", "inverse", "is_identity"]

UNARY_OPS = frozenset(
    {
        "relax.nn.relu",
        "relax.nn.gelu",
        "relax.nn.gelu_tanh",
        "relax.nn.silu",
        "relax.sigmoid",
        "relax.tanh",
        "relax.clip",
        "relax.nn.leakyrelu",
        "relax.negative",
        "relax.exp",
        "relax.sqrt",
        "relax.abs",
        "relax.astype",
    }
)
_BINARY = frozenset({"relax.add", "relax.multiply", "relax.subtract", "relax.divide"})
_REDUCTIONS = frozenset({"relax.mean", "relax.sum", "relax.max", "relax.min"})
_POOLS = frozenset({"relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d"})


@dataclass(frozen=True)
class Gather:
    """``take(base, idx, axis)`` not yet materialised."""

    base: Any
    idx: np.ndarray
    axis: int


def inverse(idx: np.ndarray) -> np.ndarray:
    inv = np.empty_like(idx)
    inv[idx] = np.arange(idx.size, dtype=idx.dtype)
    return inv


def is_identity(idx: np.ndarray) -> bool:
    return bool(np.array_equal(idx, np.arange(idx.size)))


def _ndim(expr: Any) -> int | None:
    ty = getattr(expr, "ty", None) or getattr(expr, "struct_info", None)
    nd = getattr(ty, "ndim", None)
    return int(nd) if nd is not None and int(nd) >= 0 else None


def _shape(expr: Any) -> tuple[int, ...] | None:
    ty = getattr(expr, "ty", None) or getattr(expr, "struct_info", None)
    shape = getattr(ty, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        return None


def _channel_const(value: np.ndarray, out_ndim: int, axis: int, channels: int) -> np.ndarray | None:
    """``value`` if it broadcasts against the output with variation only along ``axis``."""
    if value.ndim > out_ndim:
        return None
    full = (1,) * (out_ndim - value.ndim) + tuple(value.shape)
    for ax, size in enumerate(full):
        if ax == axis:
            if size not in (1, channels):
                return None
        elif size != 1:
            return None
    return value.reshape(full)


ConstLookup = Callable[[Any], np.ndarray | None]


def push_gather(
    call: relax.Call,
    pos: int,
    gather: Gather,
    const_of: ConstLookup,
) -> tuple[relax.Call, Gather] | None:
    """Move ``gather`` (on ``call.args[pos]``) below ``call``.

    Returns the rewritten call (``gather.base`` in place of the gathered argument, constants
    permuted) and the gather that now applies to its result (``base`` left as None for the
    caller to fill in), or None when the op does not commute with the gather.
    """
    op = op_name(call)
    args = list(call.args)
    nd = _ndim(call)
    if op is None or nd is None:
        return None
    axis = gather.axis
    inv = inverse(gather.idx)
    if op in UNARY_OPS and pos == 0:
        args[0] = gather.base
        return relax.Call(call.op, args, call.attrs, call.ty_args), Gather(
            None, gather.idx, axis
        )

    if op in _BINARY and len(args) == 2:
        other = args[1 - pos]
        value = const_of(other)
        out_axis = axis + (nd - (_ndim(args[pos]) or nd))
        if value is None:
            return None
        chan = _channel_const(value, nd, out_axis, gather.idx.size)
        if chan is None:
            return None
        permuted = np.take(chan, inv, axis=out_axis) if chan.shape[out_axis] > 1 else chan
        args[pos] = gather.base
        args[1 - pos] = relax.const(np.ascontiguousarray(permuted.reshape(value.shape)))
        return relax.Call(call.op, args, call.attrs, call.ty_args), Gather(
            None, gather.idx, out_axis
        )

    if op == "relax.nn.layer_norm" and pos == 0:
        axes = [int(a) % nd for a in call.attrs.axes]
        if axes != [nd - 1] or axis != nd - 1:
            return None
        gamma, beta = const_of(args[1]), const_of(args[2])
        if gamma is None or beta is None:
            return None
        args[0] = gather.base
        args[1] = relax.const(np.ascontiguousarray(gamma[inv]))
        args[2] = relax.const(np.ascontiguousarray(beta[inv]))
        return relax.Call(call.op, args, call.attrs, call.ty_args), Gather(
            None, gather.idx, axis
        )

    if op in _POOLS and pos == 0 and axis == 1 and str(call.attrs.layout) == "NCHW":
        args[0] = gather.base
        return relax.Call(call.op, args, call.attrs, call.ty_args), Gather(
            None, gather.idx, axis
        )

    if op in _REDUCTIONS and pos == 0 and call.attrs.axis is not None:
        # a reduction over other axes (global average pooling) keeps every channel
        src_nd = _ndim(args[0]) or nd
        axes = sorted(int(a) % src_nd for a in call.attrs.axis)
        if axis in axes:
            return None
        out_axis = axis if call.attrs.keepdims else axis - sum(a < axis for a in axes)
        args[0] = gather.base
        return relax.Call(call.op, args, call.attrs, call.ty_args), Gather(
            None, gather.idx, out_axis
        )

    if op == "relax.take" and pos == 0:
        # selecting along another axis (BERT's pooler takes token 0) keeps every channel
        k = int(call.attrs.axis) % int(_ndim(args[0]) or nd)
        ids_nd = _ndim(args[1])
        if k == axis or ids_nd is None:
            return None
        args[0] = gather.base
        out_axis = axis if axis < k else axis + ids_nd - 1
        return relax.Call(call.op, args, call.attrs, call.ty_args), Gather(
            None, gather.idx, out_axis
        )

    if op == "relax.reshape" and pos == 0:
        src, dst = _shape(args[0]), _shape(call)
        if src and dst and axis == len(src) - 1 and src[-1] == dst[-1]:
            # regrouping the leading axes ((B*S, C) <-> (B, S, C)) leaves the channel axis alone
            args[0] = gather.base
            new_call = relax.Call(call.op, args, call.attrs, call.ty_args)
            return new_call, Gather(None, gather.idx, len(dst) - 1)
        new_idx = None if src is None or dst is None else reshape_index(src, dst, axis, gather.idx)
        if new_idx is None:
            return None
        args[0] = gather.base
        new_call = relax.Call(call.op, args, call.attrs, call.ty_args)
        return new_call, Gather(None, new_idx, len(dst) - 1)
    return None


def reshape_index(
    src: tuple[int, ...], dst: tuple[int, ...], axis: int, idx: np.ndarray
) -> np.ndarray | None:
    """The gather index after a reshape that flattens the gathered axis with the axes after it
    into the last output axis (``(B, C, H, W) -> (B, C*H*W)``), or None for other reshapes."""
    if src[:axis] != dst[:-1] or int(np.prod(src[axis:])) != dst[-1]:
        return None
    inner = int(np.prod(src[axis + 1 :])) if axis + 1 < len(src) else 1
    return (idx[:, None] * inner + np.arange(inner)[None, :]).reshape(-1)
