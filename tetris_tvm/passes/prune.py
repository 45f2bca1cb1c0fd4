"""TetrisPrune: apply a PruningPlan to the weight layers of ``main`` (a Relax module pass).

Input: ``main(*inputs, *weights)`` as :func:`tetris_tvm.frontend.import_model` makes it (the
weights are parameters, their values and torch names given to the pass), and a plan, e.g. from
:func:`tetris_tvm.passes.planning.plan_graph` (which computes one whose permutations the graph
can fold away) or :func:`tetris_tvm.prune`. For every ``matmul(x, permute_dims(W))`` (torch
Linear) and ``conv2d(x, W)`` (Conv2d, groups=1) whose weight has a plan, the pass emits::

    xg = take(x, p_in, axis=channel)          # only if the input axis is permuted
    yp = tetris_<layer>(xg)                   # private function, attr Composite=tetris.linear
                                              #   | tetris.conv2d; body: matmul/conv2d with the
                                              #   masked weight in permuted storage order
    y  = take(yp, inverse(p_out), axis=channel)  # only if the output axis is permuted

so ``y`` is exactly the masked layer in original coordinates. Channel streams whose planned
layers all store the stream axis in one order are computed in that order (see
:class:`_StreamRewriter`). FoldPermutations then removes the gathers, LowerBlockSparse turns
the composites into block-sparse kernels. The pass records the layers it rewrote in the
module attribute ``tetris.pruned_layers`` (read it with :func:`pruned_layers`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import tvm
from tvm import relax

from ..attr_keys import Attr
from ..plan import PruningPlan
from ..reorder import LayerPlan
from ._dataflow import rebuild_main, substitute
from .gather_rules import Gather, inverse, is_identity, push_gather
from .layer_sites import LayerGraph, LayerSite, layer_graph
from .planning import worth_sharing
from .streams import Stream, table_axis

__all__ = [
    "COMPOSITE_CONV2D",
    "COMPOSITE_LINEAR",
    "PRUNED_ATTR",
    "TetrisPrune",
    "pruned_layers",
]

COMPOSITE_LINEAR = Attr.LINEAR_COMPOSITE
COMPOSITE_CONV2D = Attr.CONV2D_COMPOSITE
PRUNED_ATTR = Attr.PRUNED_LAYERS
"""Module attribute where TetrisPrune records the layers it rewrote (JSON, see pruned_layers)."""


@tvm.transform.module_pass(opt_level=0, name="TetrisPrune")
class TetrisPrune:
    """Module pass: apply a PruningPlan to the weight layers of ``main``.

    Args:
        plan: a PruningPlan keyed by torch weight name (e.g. from
            :func:`~tetris_tvm.passes.planning.plan_graph`); layers it does not name stay
            dense, its permutations are honoured (gathers stay where nothing absorbs them).
        weights: values of ``main``'s weight parameters, by relax parameter name.
        torch_names: relax parameter name -> torch ``state_dict`` name.

    The result's ``tetris.pruned_layers`` attribute lists the torch names of the rewritten
    layers (:func:`pruned_layers`).
    """

    def __init__(
        self,
        plan: PruningPlan,
        weights: Mapping[str, np.ndarray],
        torch_names: Mapping[str, str],
    ) -> None:
        if not isinstance(plan, PruningPlan):
            raise TypeError(
                "TetrisPrune applies a PruningPlan (compute one with "
                f"tetris_tvm.passes.plan_graph), got {type(plan).__name__}"
            )
        self._plan = plan  # what it applies; the pass hands nothing back but the module
        self.weights = weights
        self.torch_names = dict(torch_names)

    def transform_module(self, mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        graph = layer_graph(mod, self.weights, self.torch_names)
        plan = self._plan
        by_out = {s.out_var: s for s in graph.layers.values() if s.torch_name in plan}
        for site in by_out.values():
            lp = plan[site.torch_name]
            w = self.weights[site.weight_param]
            if lp.mask.shape != w.shape:
                raise ValueError(
                    f"{site.torch_name}: plan was made for shape {lp.mask.shape} "
                    f"but the model's weight is {w.shape}"
                )
        streams = _StreamRewriter(graph, plan)
        counter = [0]

        def rewrite(bb: relax.BlockBuilder, var: Any, value: Any, mapping: dict) -> Any:
            site = by_out.get(var)
            if site is None:
                return streams.rewrite(bb, var, value, mapping)
            lp = plan[site.torch_name]
            w = self.weights[site.weight_param]
            p_out, p_in = lp.perms[0], lp.perms[1]
            stored = (w * lp.mask)[np.ix_(*lp.perms)].astype(w.dtype)
            ax_in = site.channel_axis_in
            x = streams.permuted(site.x, ax_in, bb)
            if x is None:
                x = value.args[0]
                if not is_identity(p_in):
                    x = bb.emit(relax.op.take(x, relax.const(p_in.astype("int64")), axis=ax_in))
            counter[0] += 1
            gv = _add_composite(bb, site, x, stored, lp, counter[0])
            y = relax.Call(gv, [x])
            if streams.stream_of(var) is not None:
                return streams.bind(bb, var, bb.emit(y), mapping)
            if is_identity(p_out):
                return y
            yp = bb.emit(y)
            return relax.op.take(
                yp, relax.const(inverse(p_out).astype("int64")), axis=site.channel_axis_out
            )

        new = rebuild_main(mod, rewrite)
        names = list(dict.fromkeys(s.torch_name for s in by_out.values()))
        return new.with_attr(PRUNED_ATTR, json.dumps(names))


def pruned_layers(mod: tvm.IRModule) -> list[str]:
    """What TetrisPrune recorded in ``mod`` (its ``tetris.pruned_layers`` attribute): the
    torch names of the layers it rewrote, in graph order, also after later passes; empty when
    it did not run."""
    attrs = mod.attrs
    text = None if attrs is None else attrs.get(PRUNED_ATTR)
    return [] if text is None else list(json.loads(str(text)))


class _StreamRewriter:
    """Computes the tensors of permuted streams in their stored (permuted) channel order.

    A stream is stored permuted when all its planned layers order its axis the same way
    (``P``, slot -> channel) and that order is not the identity. Each stream tensor ``v`` is
    then computed as ``v_p = v[..., P]``: producers keep their outputs permuted, consumers
    read ``v_p`` directly, per-channel constants (biases, layer-norm gamma/beta, embedding
    tables) are stored permuted, joins add permuted to permuted. Other users get
    ``take(v_p, inverse(P))``, which FoldPermutations drops where nobody needs it.
    """

    def __init__(self, graph: LayerGraph, plan: PruningPlan) -> None:
        self.graph = graph
        self.const_of = graph.const_of
        self.order: dict[Any, tuple[Stream, np.ndarray]] = {}
        self.perm: dict[Any, Any] = {}  # old stream var -> new var in stored order
        for st in graph.streams:
            p = _stream_order(st, plan)
            if p is not None:
                for v in st.axis_of:
                    self.order[v] = (st, p)

    def stream_of(self, var: Any) -> tuple[Stream, np.ndarray] | None:
        return self.order.get(var)

    def permuted(self, var: Any, axis: int, bb: relax.BlockBuilder) -> Any:
        """The stored-order version of ``var`` if ``var`` is a permuted-stream tensor on
        ``axis``, else None."""
        hit = self.order.get(var)
        if hit is None or hit[0].axis_of[var] != axis:
            return None
        return self.stored(var, bb)

    def stored(self, var: Any, bb: relax.BlockBuilder) -> Any:
        """``var`` in stored order; a model input that starts a stream is gathered once,
        at its first use."""
        if var not in self.perm:
            st, p = self.order[var]
            idx = relax.const(p.astype("int64"))
            self.perm[var] = bb.emit(relax.op.take(var, idx, axis=st.axis_of[var]))
        return self.perm[var]

    def bind(self, bb: relax.BlockBuilder, var: Any, stored: Any, mapping: dict) -> Any:
        st, p = self.order[var]
        axis = st.axis_of[var]
        self.perm[var] = stored
        idx = relax.const(inverse(p).astype("int64"))
        orig = bb.emit(relax.op.take(stored, idx, axis=axis))
        mapping[var] = orig
        return orig

    def rewrite(self, bb: relax.BlockBuilder, var: Any, value: Any, mapping: dict) -> Any:
        hit = self.order.get(var)
        if hit is None:
            return value
        st, p = hit
        axis = st.axis_of[var]
        raw = self.graph.by_var[var].value
        inv = inverse(p)
        if var in st.join_vars:
            args = [self.stored(a, bb) for a in raw.args]
            return self.bind(bb, var, bb.emit(relax.Call(raw.op, args, raw.attrs)), mapping)
        if var in st.table_roots:
            t_axis = table_axis(raw, axis)
            table = np.take(self.const_of(raw.args[0]), p, axis=t_axis)
            args = [relax.const(np.ascontiguousarray(table)), value.args[1]]
            return self.bind(bb, var, bb.emit(relax.Call(raw.op, args, raw.attrs)), mapping)
        if var not in st.roots and isinstance(raw, relax.Call):
            for pos, a in enumerate(raw.args):
                if a in st.axis_of:
                    # on the original binding: const_of knows its (old) vars
                    g = Gather(self.stored(a, bb), inv, st.axis_of[a])
                    moved = push_gather(raw, pos, g, self.const_of)
                    if moved is not None and moved[1].axis == axis:
                        call = substitute(moved[0], mapping)
                        return self.bind(bb, var, bb.emit(call), mapping)
        # a root: computed in the original order, then gathered once
        orig = bb.emit(value)
        mapping[var] = orig
        self.perm[var] = bb.emit(relax.op.take(orig, relax.const(p.astype("int64")), axis=axis))
        return orig


def _stream_order(st: Stream, plan: PruningPlan) -> np.ndarray | None:
    """The order all of a stream's planned layers store its axis in, if they agree on one
    that is not the identity (and the stream is one that planning considers sharing,
    :func:`~tetris_tvm.passes.planning.worth_sharing`)."""
    if st.broken or not worth_sharing(st, plan):
        return None
    orders = [plan[s.torch_name].perms[0] for s in st.producers if s.torch_name in plan]
    orders += [plan[s.torch_name].perms[1] for s in st.consumers if s.torch_name in plan]
    first = orders[0]
    if is_identity(first) or any(not np.array_equal(first, o) for o in orders[1:]):
        return None
    return first


def _add_composite(
    bb: relax.BlockBuilder, site: LayerSite, x: Any, stored: np.ndarray, lp: LayerPlan, k: int
) -> Any:
    """A private function computing the layer on the permuted, masked weight."""
    xv = relax.Var("x", x.ty if hasattr(x, "ty") else x.struct_info)
    if site.kind == "linear":
        body = relax.op.matmul(xv, relax.const(np.ascontiguousarray(stored.T)))
        composite = COMPOSITE_LINEAR
    else:
        a = site.conv_attrs
        body = relax.op.nn.conv2d(
            xv,
            relax.const(np.ascontiguousarray(stored)),
            strides=a.strides,
            padding=a.padding,
            dilation=a.dilation,
            groups=1,
            data_layout="NCHW",
            kernel_layout="OIHW",
            out_dtype=a.out_dtype if str(a.out_dtype) else "",
        )
        composite = COMPOSITE_CONV2D
    safe = site.torch_name.replace(".", "_")
    name = f"tetris_{site.kind}_{safe}"
    attrs = {
        "Composite": composite,
        Attr.LAYER: site.torch_name,
        Attr.BLOCK: [int(b) for b in lp.block_size[:2]],
        Attr.BALANCED: bool(lp.balanced),
    }
    fbb = relax.BlockBuilder()
    with fbb.function(name, [xv], attrs=attrs, private=True):
        out = fbb.emit(body)
        fbb.emit_func_output(out)
    return bb.add_func(fbb.get()[name], name)
