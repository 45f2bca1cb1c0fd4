"""Channel streams: the tensors that must share one channel order for no gather to be needed.

A residual network carries one tensor along a *stream*: every block reads it (its first
layers' inputs), writes back into it (``x + f(x)``), and layer norms, biases and activations
pass it on channel by channel. If one layer stored the stream's channels in a different order
from the rest, a runtime gather would be needed where the orders meet (the residual add).
So a stream's channel axis is permuted once, for all its layers together.

:func:`find_streams` walks ``main``'s dataflow from every weight layer's input and output and
collects connected tensors along their channel axis through

- ops a channel gather commutes with (:func:`~tetris_tvm.passes.gather_rules.push_gather`:
  elementwise ops, per-channel constants, layer norm, pooling, reshapes that keep the channel
  axis), as long as the channel count stays the same, and
- *joins*: ``add`` / ``subtract`` / ``multiply`` of two activations that both have the
  channel axis (a residual add; other axes may broadcast), which tie both inputs and the
  output together.

What a stream touches, besides its tensors:

- producers: weight layers whose output is a stream tensor (their output axis is the stream);
- consumers: weight layers whose input is a stream tensor (their input axis is the stream);
- roots: stream tensors made by something else (a model input, an op the walk cannot pass);
  a *table root* is ``take(table, ids)`` from a constant table (an embedding lookup), whose
  table can be stored permuted, so it costs nothing;
- leaks: uses outside the stream (a model output, an attention reshape) that need the
  original channel order back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tvm import relax

from ._dataflow import op_name
from .gather_rules import Gather, push_gather

__all__ = ["Stream", "find_streams", "JOIN_OPS", "table_axis"]

JOIN_OPS = frozenset({"relax.add", "relax.subtract", "relax.multiply"})


@dataclass
class Stream:
    """One channel stream of ``main`` (see the module docstring)."""

    channels: int
    axis_of: dict[Any, int] = field(default_factory=dict)  # stream tensor -> channel axis
    producers: list[Any] = field(default_factory=list)  # LayerSites
    consumers: list[Any] = field(default_factory=list)  # LayerSites
    roots: list[Any] = field(default_factory=list)  # vars (params included)
    table_roots: list[Any] = field(default_factory=list)  # subset of roots
    leaks: list[tuple[Any, Any]] = field(default_factory=list)  # (user var, stream var)
    join_vars: set[Any] = field(default_factory=set)  # outputs of joins
    broken: str | None = None  # why the stream cannot be stored permuted, if it cannot

    @property
    def joins(self) -> int:
        return len(self.join_vars)

    @property
    def layers(self) -> list[Any]:
        seen: dict[str, Any] = {}
        for site in self.producers + self.consumers:
            seen.setdefault(site.torch_name, site)
        return list(seen.values())


def _size(var: Any, axis: int) -> int | None:
    try:
        return int(var.ty.shape[axis])
    except (TypeError, ValueError, AttributeError):
        return None


def _ndim(var: Any) -> int | None:
    nd = getattr(getattr(var, "ty", None), "ndim", None)
    return int(nd) if nd is not None and int(nd) >= 0 else None


def table_axis(call: relax.Call, out_axis: int) -> int | None:
    """For ``take(table, ids, axis=k)``: the table axis that output axis ``out_axis`` reads."""
    k = int(call.attrs.axis) % int(call.args[0].ty.ndim)
    ids_nd = _ndim(call.args[1])
    if ids_nd is None:
        return None
    if out_axis < k:
        return out_axis
    if out_axis >= k + ids_nd:
        return out_axis - ids_nd + 1
    return None


def _join_axes(
    call: Any, out_axis: int, n: int, const_of: Callable[[Any], Any]
) -> list[int] | None:
    """For a join (a binary op of two activations that both have the channel axis, of size
    ``n``; other axes may broadcast): each input's channel axis, given the output's."""
    if op_name(call) not in JOIN_OPS or len(call.args) != 2:
        return None
    nd = _ndim(call)
    axes = []
    for a in call.args:
        a_nd = _ndim(a)
        if const_of(a) is not None or a_nd is None or nd is None:
            return None
        axis = out_axis - (nd - a_nd)
        if axis < 0 or _size(a, axis) != n:
            return None
        axes.append(axis)
    return axes


def _activations(call: relax.Call, const_of: Callable[[Any], Any]) -> list[int]:
    return [
        i
        for i, a in enumerate(call.args)
        if isinstance(a, relax.Var) and const_of(a) is None and _ndim(a) is not None
    ]


def find_streams(an: Any, const_of: Callable[[Any], Any]) -> list[Stream]:
    """Every channel stream that touches a weight layer of ``an`` (a prune ``_Analysis``).

    ``const_of(expr)`` returns the value of a constant or weight parameter, else None.
    """
    consumers_of: dict[Any, list[Any]] = {}
    for site in an.layers.values():
        consumers_of.setdefault(site.x, []).append(site)
    seen: dict[Any, Stream] = {}
    streams: list[Stream] = []

    def walk(seed: Any, axis: int) -> None:
        n = _size(seed, axis)
        if n is None or seed in seen:
            return
        st = Stream(channels=n)
        todo = [(seed, axis)]
        st.axis_of[seed] = axis
        seen[seed] = st

        def reach(var: Any, ax: int) -> bool:
            if var in st.axis_of:
                return st.axis_of[var] == ax
            tensor = isinstance(var, relax.DataflowVar) or var in an.params
            if var in seen or not tensor or _size(var, ax) != n:
                return False
            st.axis_of[var] = ax
            seen[var] = st
            todo.append((var, ax))
            return True

        while todo:
            var, ax = todo.pop()
            _backward(an, st, var, ax, reach, const_of)
            _forward(an, st, var, ax, reach, const_of, consumers_of)
        streams.append(st)

    for site in an.layers.values():
        if isinstance(site.x, relax.DataflowVar) or site.x in an.params:
            walk(site.x, site.channel_axis_in)
        if isinstance(site.out_var, relax.DataflowVar):
            walk(site.out_var, site.channel_axis_out)
    for st in streams:
        st.producers.sort(key=lambda s: s.torch_name)
        st.consumers.sort(key=lambda s: s.torch_name)
    return streams


def _backward(
    an: Any, st: Stream, var: Any, ax: int, reach: Callable, const_of: Callable
) -> None:
    """How ``var`` is made: by a producer layer, a join, an edge from another tensor, or not
    (a root)."""
    site = an.layers.get(var)
    if site is not None and site.channel_axis_out == ax:
        if site not in st.producers:
            st.producers.append(site)
        return
    binding = an.by_var.get(var)
    value = None if binding is None else binding.value
    if not isinstance(value, relax.Call) or site is not None:
        st.roots.append(var)
        return
    join = None if site is not None else _join_axes(value, ax, st.channels, const_of)
    if join is not None:
        st.join_vars.add(var)
        if not all([reach(a, a_ax) for a, a_ax in zip(value.args, join, strict=True)]):
            st.broken = f"a residual join of {var.name} mixes channel axes"
        return
    for pos in _activations(value, const_of):
        arg = value.args[pos]
        for a_in in range(_ndim(arg) or 0):
            if _size(arg, a_in) != st.channels:
                continue
            moved = push_gather(value, pos, Gather(arg, np.arange(st.channels), a_in), const_of)
            if moved is not None and moved[1].axis == ax and moved[1].idx.size == st.channels:
                reach(arg, a_in)
                return
    st.roots.append(var)
    if (
        op_name(value) == "relax.take"
        and const_of(value.args[0]) is not None
        and table_axis(value, ax) is not None
    ):
        st.table_roots.append(var)


def _forward(
    an: Any,
    st: Stream,
    var: Any,
    ax: int,
    reach: Callable,
    const_of: Callable,
    consumers_of: dict[Any, list[Any]],
) -> None:
    """Where ``var`` goes: consumer layers, joins, edges to other tensors, or out (leaks)."""
    for site in consumers_of.get(var, []):
        if site.channel_axis_in == ax and site not in st.consumers:
            st.consumers.append(site)
    for user, pos in an.uses.get(var, []):
        if user in an.layers and pos == 0 and an.layers[user].channel_axis_in == ax:
            continue  # a consumer layer (recorded above)
        binding = an.by_var.get(user)
        value = None if binding is None else binding.value
        if not isinstance(value, relax.Call) or not isinstance(user, relax.DataflowVar):
            st.leaks.append((user, var))
            continue
        out_axis = ax + (_ndim(value) or 0) - (_ndim(var) or 0)
        join = _join_axes(value, out_axis, st.channels, const_of)
        if join is not None:
            reached = [reach(a, a_ax) for a, a_ax in zip(value.args, join, strict=True)]
            if all(reached) and reach(user, out_axis):
                st.join_vars.add(user)
                continue
            st.leaks.append((user, var))
            continue
        moved = push_gather(value, pos, Gather(var, np.arange(st.channels), ax), const_of)
        if moved is not None and moved[1].idx.size == st.channels and reach(user, moved[1].axis):
            continue
        st.leaks.append((user, var))
