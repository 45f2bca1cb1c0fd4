"""The weight layers of ``main`` and how its tensors are used: what planning and TetrisPrune read.

:func:`find_layers` finds every ``matmul(x, permute_dims(W))`` (torch Linear, also in
torch.export's ``broadcast_to`` bmm form) and ``conv2d(x, W)`` (Conv2d, groups=1, NCHW/OIHW)
whose weight ``W`` is a parameter of ``main`` with a torch name, and records the use lists of
``main``'s bindings. :func:`layer_graph` adds the weights' values and the channel streams
(:mod:`tetris_tvm.passes.streams`), which both planning (:mod:`tetris_tvm.passes.planning`)
and rewriting (:class:`tetris_tvm.passes.TetrisPrune`) need.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax

from ..kernels.compute import shape_dims
from ._dataflow import const_lookup, main_bindings, op_name, same_dims, use_lists
from .streams import Stream, find_streams

__all__ = ["LayerGraph", "LayerSite", "find_layers", "layer_graph"]


@dataclass
class LayerSite:
    """One weight layer found in ``main``."""

    kind: str  # "linear" | "conv2d"
    out_var: Any  # the var bound to the matmul / conv2d
    x: Any  # the activation input
    weight_param: str  # relax parameter name of the weight
    torch_name: str
    channel_axis_in: int
    channel_axis_out: int
    transposed_var: Any = None  # linear: the permute_dims var
    conv_attrs: Any = None


@dataclass
class LayerGraph:
    """``main``'s bindings, their uses and its weight layers (made by :func:`find_layers`)."""

    bindings: list[Any]
    uses: dict[Any, list[tuple[Any, int]]] = field(default_factory=dict)
    layers: dict[Any, LayerSite] = field(default_factory=dict)  # by out_var
    by_var: dict[Any, Any] = field(default_factory=dict)  # var -> its binding
    params: set[Any] = field(default_factory=set)  # main's parameters
    # value of a constant / weight parameter, else None (set by layer_graph)
    const_of: Callable[[Any], Any] | None = None
    streams: list[Stream] = field(default_factory=list)  # channel streams (set by layer_graph)


def _ndim(expr: Any) -> int:
    return int(expr.ty.ndim)


def find_layers(func: relax.Function, torch_names: Mapping[str, str]) -> LayerGraph:
    """Weight layers of ``func`` (params named in ``torch_names``) and the use lists."""
    params = {p: p.name for p in func.params}
    bindings = main_bindings(func)
    graph = LayerGraph(bindings, uses=use_lists(bindings))
    transposed: dict[Any, Any] = {}
    for b in bindings:
        v = b.value
        op = op_name(v)
        if op == "relax.permute_dims" and v.args[0] in params and _ndim(v.args[0]) == 2:
            axes = v.attrs.axes
            if axes is None or [int(a) for a in axes] == [1, 0]:
                transposed[b.var] = v.args[0]
        elif op == "relax.broadcast_to" and v.args[0] in transposed:
            # torch.export's bmm form of a linear: the transposed weight broadcast over batch
            src = shape_dims(v.args[0].ty.shape)
            dst = shape_dims(b.var.ty.shape)
            if same_dims(dst[-2:], src):
                transposed[b.var] = transposed[v.args[0]]
        elif op == "relax.matmul" and v.args[1] in transposed:
            w = transposed[v.args[1]]
            if params[w] in torch_names:
                nd = _ndim(v.args[0])
                graph.layers[b.var] = LayerSite(
                    "linear",
                    b.var,
                    v.args[0],
                    params[w],
                    torch_names[params[w]],
                    nd - 1,
                    nd - 1,
                    transposed_var=v.args[1],
                )
        elif op == "relax.nn.conv2d" and v.args[1] in params:
            a = v.attrs
            if (
                int(a.groups) == 1
                and str(a.data_layout) == "NCHW"
                and str(a.kernel_layout) == "OIHW"
                and params[v.args[1]] in torch_names
            ):
                graph.layers[b.var] = LayerSite(
                    "conv2d",
                    b.var,
                    v.args[0],
                    params[v.args[1]],
                    torch_names[params[v.args[1]]],
                    1,
                    1,
                    conv_attrs=a,
                )
    graph.by_var = {b.var: b for b in bindings}
    graph.params = set(func.params)
    return graph


def layer_graph(
    mod: tvm.IRModule, weights: Mapping[str, np.ndarray], torch_names: Mapping[str, str]
) -> LayerGraph:
    """:func:`find_layers` of ``mod["main"]`` with the weights' values (one lookup cache for
    every user) and the channel streams filled in."""
    graph = find_layers(mod["main"], torch_names)
    graph.const_of = const_lookup(weights, graph.by_var)
    graph.streams = find_streams(graph, graph.const_of)
    return graph
