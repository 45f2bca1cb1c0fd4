"""TetrisPrune: reorder + block-prune every eligible weight of ``main`` (a Relax module pass).

Input: ``main(*inputs, *weights)`` as :func:`tetris_tvm.frontend.import_model` makes it (the
weights are parameters, their values and torch names given to the pass). For every
``matmul(x, permute_dims(W))`` (torch Linear) and ``conv2d(x, W)`` (Conv2d, groups=1) whose
weight has a plan, the pass emits::

    xg = take(x, p_in, axis=channel)          # only if the input axis is permuted
    yp = tetris_<layer>(xg)                   # private function, attr Composite=tetris.linear
                                              #   | tetris.conv2d; body: matmul/conv2d with the
                                              #   masked weight in permuted storage order
    y  = take(yp, inverse(p_out), axis=channel)  # only if the output axis is permuted

so ``y`` is exactly the masked layer in original coordinates. FoldPermutations then removes
the gathers, LowerBlockSparse turns the composites into block-sparse kernels.

When no plan is given the pass computes one, choosing per layer which axes may be permuted so
that every permutation can later be folded away: an input axis is fixed to the permutation
its producer already carries, and an output axis is permuted only when all its consumers can
absorb a permutation (elementwise / per-channel ops, layer norm, pooling, flattening, and the
input of another weight layer). ``allow_gathers=True`` permutes both axes of every layer and
leaves a runtime gather where nothing absorbs it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax

from ..kernels.compute import shape_dims
from ..plan import PruningPlan, with_retained
from ..reorder import JointMember, LayerPlan, prune_joint, prune_weight
from ._dataflow import (
    const_lookup,
    main_bindings,
    op_name,
    rebuild_main,
    same_dims,
    substitute,
    use_lists,
)
from .gather_rules import Gather, inverse, is_identity, push_gather
from .streams import Stream, find_streams, table_axis

__all__ = [
    "TetrisPrune",
    "LayerSite",
    "COMPOSITE_LINEAR",
    "COMPOSITE_CONV2D",
    "STREAM_MODES",
    "find_layers",
]

COMPOSITE_LINEAR = "tetris.linear"
COMPOSITE_CONV2D = "tetris.conv2d"
STREAM_MODES = ("auto", "shared", "separate")


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
class _Analysis:
    bindings: list[Any]
    uses: dict[Any, list[tuple[Any, int]]] = field(default_factory=dict)
    layers: dict[Any, LayerSite] = field(default_factory=dict)  # by out_var
    by_var: dict[Any, Any] = field(default_factory=dict)  # var -> its binding
    params: set[Any] = field(default_factory=set)  # main's parameters
    const_of: Any = None  # value of a constant / weight (set by TetrisPrune)
    streams: list[Stream] = field(default_factory=list)  # channel streams (set by TetrisPrune)


def _ndim(expr: Any) -> int:
    return int(expr.ty.ndim)


def find_layers(func: relax.Function, torch_names: Mapping[str, str]) -> _Analysis:
    """Weight layers of ``func`` (params named in ``torch_names``) and the use lists."""
    params = {p: p.name for p in func.params}
    bindings = main_bindings(func)
    an = _Analysis(bindings, uses=use_lists(bindings))
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
                an.layers[b.var] = LayerSite(
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
                an.layers[b.var] = LayerSite(
                    "conv2d",
                    b.var,
                    v.args[0],
                    params[v.args[1]],
                    torch_names[params[v.args[1]]],
                    1,
                    1,
                    conv_attrs=a,
                )
    an.by_var = {b.var: b for b in bindings}
    an.params = set(func.params)
    return an


@tvm.transform.module_pass(opt_level=0, name="TetrisPrune")
class TetrisPrune:
    """Module pass: apply (or compute) a PruningPlan to the weight layers of ``main``.

    Args:
        plan: a PruningPlan keyed by torch weight name; ``None`` computes one.
        weights: values of ``main``'s weight parameters, by relax parameter name.
        torch_names: relax parameter name -> torch ``state_dict`` name.
        eligible: torch weight names that may be pruned when no plan is given (default: all
            linear/conv2d weights found).
        sparsity, block_size, prune_options: settings for a computed plan
            (``prune_options`` go to :func:`tetris_tvm.prune_weight`).
        allow_gathers: computed plans permute every axis, leaving runtime gathers where
            nothing absorbs them.
        streams: how computed plans treat a channel stream shared by several layers (a
            residual stream, see :mod:`tetris_tvm.passes.streams`): ``"auto"`` also solves
            each stream with one permutation for all its layers (:func:`prune_joint`) and
            keeps that when it retains more L1 and needs no runtime gather; ``"shared"``
            keeps it whenever it retains more L1 (accepting gathers, e.g. at a model output);
            ``"separate"`` leaves stream axes unpermuted.
        scores: importance maps by torch weight name (:mod:`tetris_tvm.importance`) that a
            computed plan clusters and prunes instead of ``|W|``.

    After the pass ran, :attr:`plan` holds the plan used, :attr:`sites` the layers found and
    :attr:`stream_report` one comparison per stream considered.
    """

    def __init__(
        self,
        plan: PruningPlan | None,
        weights: Mapping[str, np.ndarray],
        torch_names: Mapping[str, str],
        *,
        eligible: Iterable[str] | None = None,
        sparsity: float = 0.75,
        block_size: int | tuple[int, int] = (32, 32),
        prune_options: Mapping[str, Any] | None = None,
        allow_gathers: bool = False,
        overrides: Mapping[str, Any] | None = None,
        streams: str = "auto",
        scores: Mapping[str, np.ndarray] | None = None,
        progress: bool = True,
    ) -> None:
        if streams not in STREAM_MODES:
            raise ValueError(f"streams must be one of {STREAM_MODES}, got {streams!r}")
        self.streams = streams
        self.stream_report: list[dict[str, Any]] = []
        self.given_plan = plan
        self.weights = weights
        self.torch_names = dict(torch_names)
        self.eligible = None if eligible is None else set(eligible)
        self.sparsity = sparsity
        self.block_size = block_size
        self.prune_options = dict(prune_options or {})
        self.allow_gathers = allow_gathers
        self.overrides = overrides
        self.scores = dict(scores or {})
        self.progress = progress
        self.plan: PruningPlan | None = None
        self.sites: list[LayerSite] = []

    # -----------------------------------------------------------------------------------------
    def transform_module(self, mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        func = mod["main"]
        an = find_layers(func, self.torch_names)
        an.const_of = const_lookup(self.weights, an.by_var)  # one cache for the whole pass
        an.streams = find_streams(an, an.const_of)  # planning and rewriting both use them
        self.sites = list(an.layers.values())
        plan = self.given_plan if self.given_plan is not None else self._compute_plan(an)
        self.plan = plan
        return self._rewrite(mod, an, plan)

    def plan_module(self, mod: tvm.IRModule) -> PruningPlan:
        """The plan this pass would compute for ``mod`` (or the given one), without rewriting."""
        if self.given_plan is not None:
            return self.given_plan
        func = mod["main"]
        an = find_layers(func, self.torch_names)
        an.const_of = const_lookup(self.weights, an.by_var)
        an.streams = find_streams(an, an.const_of)
        self.sites = list(an.layers.values())
        self.plan = self._compute_plan(an)
        return self.plan

    def _planning_weight(self, site: LayerSite) -> np.ndarray:
        """What a computed plan clusters: the importance scores if given, else the weight."""
        score = self.scores.get(site.torch_name)
        return self.weights[site.weight_param] if score is None else np.asarray(score)

    # planning ------------------------------------------------------------------------------
    def _settings_for(self, name: str) -> tuple[float, Any, bool]:
        import fnmatch

        from ..plan import as_override

        s, b, skip = self.sparsity, self.block_size, False
        for pat, raw in (self.overrides or {}).items():
            rule = as_override(raw)
            if fnmatch.fnmatchcase(name, pat):
                s = rule.sparsity if rule.sparsity is not None else s
                b = rule.block_size if rule.block_size is not None else b
                skip = skip or rule.skip
        return s, b, skip

    def _absorbable(
        self,
        an: _Analysis,
        var: Any,
        axis: int,
        seen: set[Any],
        reached: list[LayerSite] | None = None,
    ) -> bool:
        """Can a gather on ``var`` (along ``axis``) be folded away by all its consumers?

        ``reached`` collects the weight layers whose input the gather would reach.
        """
        if var in seen:
            return True
        seen.add(var)
        uses = an.uses.get(var, [])
        if not uses:
            return False  # a function output: the gather would stay
        const_of = an.const_of
        dummy = Gather(var, np.arange(_ndim_size(var, axis)), axis)
        for user, pos in uses:
            site = an.layers.get(user)
            if site is not None and pos == 0:
                if site.channel_axis_in != axis:
                    return False
                if reached is not None:
                    reached.append(site)
                continue
            binding = an.by_var.get(user)
            if binding is None or not isinstance(binding.value, relax.Call):
                return False
            moved = push_gather(binding.value, pos, dummy, const_of)
            if moved is None:
                return False
            if not self._absorbable(an, user, moved[1].axis, seen, reached):
                return False
        return True

    def _compute_plan(self, an: _Analysis) -> PruningPlan:
        from tqdm.auto import tqdm

        carried: dict[Any, Gather] = {}
        layers: dict[str, LayerPlan] = {}
        coupled: dict[str, LayerPlan] = {}
        pairs: dict[tuple[str, int], str] = {}  # (layer, axis) -> the axis it shares
        const_of = an.const_of
        sites_in_order = [an.layers[b.var] for b in an.bindings if b.var in an.layers]
        todo = {s.out_var for s in sites_in_order}
        progress = tqdm(total=len(todo), desc="TETRIS", unit="layer",
                        disable=len(todo) < 4 or not self.progress)
        for b in an.bindings:
            site = an.layers.get(b.var)
            if site is None:
                _propagate(b, carried, const_of)
                continue
            progress.update(1)
            name = site.torch_name
            s, block, skip = self._settings_for(name)
            if (self.eligible is not None and name not in self.eligible) or skip:
                continue
            w = self._planning_weight(site)
            pending = carried.get(site.x)
            fixed_in = None
            if pending is not None and pending.axis == site.channel_axis_in:
                fixed_in = inverse(pending.idx)
            reached: list[LayerSite] = []
            out_free = self._absorbable(an, site.out_var, site.channel_axis_out, set(), reached)
            if name in coupled:  # planned together with its producer
                lp = coupled.pop(name)
            else:
                partner = self._partner(name, reached, w, block, s, fixed_in) if out_free else None
                if partner is not None and not self.allow_gathers:
                    lp, coupled[partner[0]] = partner[1]
                    pairs[(name, 0)] = pairs[(partner[0], 1)] = f"pair:{name}"
                else:
                    in_free = self.allow_gathers and fixed_in is None
                    free = (out_free or self.allow_gathers, in_free)
                    lp = _plan_layer(w, name, s, block, fixed_in, free, self.prune_options)
            layers[name] = lp
            if not is_identity(lp.perms[0]):
                carried[site.out_var] = Gather(
                    site.out_var, inverse(lp.perms[0]), site.channel_axis_out
                )
        progress.close()
        if (
            self.streams != "separate"
            and not self.allow_gathers
            and self.prune_options.get("reorder") is not False
        ):
            self._share_streams(an, layers, pairs)
        if self.scores:  # report the fraction of each weight's own magnitude kept
            sites = {s.torch_name: s for s in an.layers.values()}
            for n in layers:
                if n in self.scores:
                    layers[n] = with_retained(layers[n], self.weights[sites[n].weight_param])
        settings = {"sparsity": self.sparsity, "block_size": self.block_size, **self.prune_options}
        return PruningPlan(layers=layers, settings=_jsonable(settings))

    def _partner(
        self,
        name: str,
        reached: list[LayerSite],
        w: np.ndarray,
        block: Any,
        s: float,
        fixed_in: np.ndarray | None,
    ) -> tuple[str, tuple[LayerPlan, LayerPlan]] | None:
        """Plan this layer jointly with the ONE layer its output feeds, when that is possible:
        their shared axis then gets one order chosen for both (prune_coupled)."""
        from ..plan import clamp_block
        from ..reorder import prune_coupled

        if len(reached) != 1 or self.prune_options.get("reorder") is False:
            return None
        other = reached[0]
        s_b, block_b, skip_b = self._settings_for(other.torch_name)
        if skip_b or (self.eligible is not None and other.torch_name not in self.eligible):
            return None
        wb = self._planning_weight(other)
        if wb.shape[1] != w.shape[0] or fixed_in is not None:
            return None  # flattened in between (conv -> linear), or our input order is fixed
        ba, bb = clamp_block(block, w.shape), clamp_block(block_b, wb.shape)
        if ba[0] != bb[1]:
            return None
        options = {k: v for k, v in self.prune_options.items() if k in ("balanced", "anneal")}
        plan_a, plan_b = prune_coupled(
            w.astype(np.float32), wb.astype(np.float32), ba, bb, s, s_b,
            names=(name, other.torch_name), **options,
        )
        return other.torch_name, (plan_a, plan_b)

    # shared streams ------------------------------------------------------------------------
    def _share_streams(
        self, an: _Analysis, layers: dict[str, LayerPlan], pairs: dict[tuple[str, int], str]
    ) -> None:
        """Solve every multi-layer stream with one permutation and keep it where it pays."""
        for st in an.streams:
            if not _worth_sharing(st, layers):
                continue
            record, joint = self._joint_stream(an, st, layers, pairs)
            self.stream_report.append(record)
            if record["choice"] == "shared":
                layers.update(joint)

    def _joint_stream(
        self,
        an: _Analysis,
        st: Stream,
        layers: dict[str, LayerPlan],
        pairs: dict[tuple[str, int], str],
    ) -> tuple[dict[str, Any], dict[str, LayerPlan]]:
        """The stream's joint plan and how it compares with the separate one."""
        from ..plan import clamp_block

        sides: dict[str, set[int]] = {}
        for site in st.producers:
            if site.torch_name in layers:
                sides.setdefault(site.torch_name, set()).add(0)
        for site in st.consumers:
            if site.torch_name in layers:
                sides.setdefault(site.torch_name, set()).add(1)
        names = sorted(sides)
        sep = float(np.mean([layers[n].retained_l1 for n in names]))
        record: dict[str, Any] = {
            "channels": st.channels,
            "layers": names,
            "joins": st.joins,
            "retained_l1_separate": sep,
            "retained_l1_shared": None,
            "runtime_gathers_shared": self._stream_gathers(an, st, layers),
            "choice": "separate",
            "reason": "",
        }
        if st.broken:
            record["reason"] = st.broken
            return record, {}
        if any(not is_identity(layers[n].perms[a]) for n in names for a in sides[n]):
            record["reason"] = "the separate plan already orders a stream axis"
            return record, {}
        sites = {s.torch_name: s for s in st.layers}
        shared_vars = {pairs.get((n, a)) for n in names for a in (0, 1) if a not in sides[n]}
        counts = {
            v: sum(pairs.get((n, a)) == v for n in names for a in (0, 1)) for v in shared_vars
        }
        members, fixed, init = [], {}, {}
        for n in names:
            w = np.asarray(self._planning_weight(sites[n]), dtype=np.float32)
            s, block, _ = self._settings_for(n)
            axes: list[str | None] = []
            fix = []
            for a in (0, 1):
                var = "stream" if a in sides[n] else pairs.get((n, a))
                if var is not None and var != "stream" and counts.get(var, 0) < 2:
                    var = None  # its partner is outside the stream: keep the separate order
                axes.append(var)
                if var is None:
                    fix.append(layers[n].perms[a])
                    continue
                fix.append(np.arange(w.shape[a]))
                if var != "stream":
                    init[var] = layers[n].perms[a]
            fixed[n] = fix
            pre = np.take(np.take(w, fix[0], axis=0), fix[1], axis=1)
            members.append(JointMember(n, pre, clamp_block(block, w.shape), s, tuple(axes)))
        options = {k: v for k, v in self.prune_options.items() if k in ("balanced", "anneal")}
        try:
            joint = prune_joint(members, init=init, **options)
        except ValueError as err:  # e.g. the layers block the stream axis differently
            record["reason"] = str(err)
            return record, {}
        joint = {n: _unfix(lp, fixed[n]) for n, lp in joint.items()}
        shared = float(np.mean([joint[n].retained_l1 for n in names]))
        record["retained_l1_shared"] = shared
        better = shared > sep + 1e-9
        gathers = record["runtime_gathers_shared"]
        if not better:
            record["reason"] = "no more L1 retained than with separate permutations"
        elif self.streams == "auto" and gathers:
            record["reason"] = f"would need {gathers} runtime gather(s) (streams='shared' allows)"
        else:
            record["choice"] = "shared"
        return record, joint

    def _stream_gathers(self, an: _Analysis, st: Stream, layers: Mapping[str, Any]) -> int:
        """Runtime gathers a permuted stream leaves: where it starts from something that
        cannot be stored permuted, and where it leaves towards something that cannot absorb
        a gather (e.g. a model output)."""
        const_of = an.const_of
        gathers = len([r for r in st.roots if r not in st.table_roots])
        gathers += len([p for p in st.producers if p.torch_name not in layers])
        leaked: set[Any] = set()
        for user, var in st.leaks:
            if var in leaked:
                continue
            binding = an.by_var.get(user)
            value = None if binding is None else binding.value
            if isinstance(value, relax.Call) and isinstance(user, relax.DataflowVar):
                pos = [i for i, a in enumerate(value.args) if a is var or a == var][0]
                dummy = Gather(var, np.arange(st.channels), st.axis_of[var])
                moved = push_gather(value, pos, dummy, const_of)
                if moved is not None and self._absorbable(an, user, moved[1].axis, set()):
                    continue
            leaked.add(var)
        return gathers + len(leaked)

    # rewriting -----------------------------------------------------------------------------
    def _rewrite(self, mod: tvm.IRModule, an: _Analysis, plan: PruningPlan) -> tvm.IRModule:
        by_out = {s.out_var: s for s in self.sites if s.torch_name in plan}
        for site in by_out.values():
            lp = plan[site.torch_name]
            w = self.weights[site.weight_param]
            if lp.mask.shape != w.shape:
                raise ValueError(
                    f"{site.torch_name}: plan was made for shape {lp.mask.shape} "
                    f"but the model's weight is {w.shape}"
                )
        streams = _StreamRewriter(an, plan)
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

        return rebuild_main(mod, rewrite)


class _StreamRewriter:
    """Computes the tensors of permuted streams in their stored (permuted) channel order.

    A stream is stored permuted when all its planned layers order its axis the same way
    (``P``, slot -> channel) and that order is not the identity. Each stream tensor ``v`` is
    then computed as ``v_p = v[..., P]``: producers keep their outputs permuted, consumers
    read ``v_p`` directly, per-channel constants (biases, layer-norm gamma/beta, embedding
    tables) are stored permuted, joins add permuted to permuted. Other users get
    ``take(v_p, inverse(P))``, which FoldPermutations drops where nobody needs it.
    """

    def __init__(self, an: _Analysis, plan: PruningPlan) -> None:
        self.an = an
        self.const_of = an.const_of
        self.order: dict[Any, tuple[Stream, np.ndarray]] = {}
        self.perm: dict[Any, Any] = {}  # old stream var -> new var in stored order
        for st in an.streams:
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
        raw = self.an.by_var[var].value
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
    that is not the identity (and the stream is one :func:`_worth_sharing` considers)."""
    if st.broken or not _worth_sharing(st, plan):
        return None
    orders = [plan[s.torch_name].perms[0] for s in st.producers if s.torch_name in plan]
    orders += [plan[s.torch_name].perms[1] for s in st.consumers if s.torch_name in plan]
    first = orders[0]
    if is_identity(first) or any(not np.array_equal(first, o) for o in orders[1:]):
        return None
    return first


def _worth_sharing(st: Stream, layers: Mapping[str, Any]) -> bool:
    """Streams that the pairwise plan does not already cover: residual joins or fan-out."""
    planned = [s for s in st.layers if s.torch_name in layers]
    return len(planned) >= 2 and (st.joins > 0 or len(planned) >= 3)


def _unfix(lp: LayerPlan, fix: list[np.ndarray]) -> LayerPlan:
    """A plan made on ``w`` pre-permuted by ``fix`` (per channel axis), in ``w``'s own terms."""
    mask = lp.mask
    perms = list(lp.perms)
    for axis, f in enumerate(fix):
        if is_identity(f):
            continue
        mask = np.take(mask, inverse(f), axis=axis)
        perms[axis] = f[lp.perms[axis]]
    return LayerPlan(
        mask=mask,
        perms=tuple(perms),
        block_size=lp.block_size,
        retained_l1=lp.retained_l1,
        sparsity=lp.sparsity,
        method=lp.method,
        balanced=lp.balanced,
        block_mask=lp.block_mask,
        history=lp.history,
    )


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def _ndim_size(var: Any, axis: int) -> int:
    return int(var.ty.shape[axis])


def _propagate(binding: Any, carried: dict[Any, Gather], const_of: Any) -> None:
    """Carry pending gathers through ``binding`` when its op commutes with them."""
    value = binding.value
    if not isinstance(value, relax.Call):
        return
    gathered = [(i, carried[a]) for i, a in enumerate(value.args) if a in carried]
    if len(gathered) != 1:
        return
    pos, g = gathered[0]
    moved = push_gather(value, pos, Gather(value.args[pos], g.idx, g.axis), const_of)
    if moved is not None:
        carried[binding.var] = Gather(binding.var, moved[1].idx, moved[1].axis)


def _plan_layer(
    w: np.ndarray,
    name: str,
    sparsity: float,
    block: Any,
    fixed_in: np.ndarray | None,
    free: tuple[bool, bool],
    options: Mapping[str, Any],
) -> LayerPlan:
    """prune_weight with the input axis pre-permuted to ``fixed_in`` (kept fixed)."""
    from ..plan import clamp_block

    wf = np.asarray(w, dtype=np.float32)
    pre = wf if fixed_in is None else np.take(wf, fixed_in, axis=1)
    lp = prune_weight(
        pre, clamp_block(block, wf.shape), sparsity, permute=free, name=name, **options
    )
    if fixed_in is None:
        return lp
    return _unfix(lp, [np.arange(wf.shape[0]), fixed_in])


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
        "tetris.layer": site.torch_name,
        "tetris.block": [int(b) for b in lp.block_size[:2]],
        "tetris.balanced": bool(lp.balanced),
    }
    fbb = relax.BlockBuilder()
    with fbb.function(name, [xv], attrs=attrs, private=True):
        out = fbb.emit(body)
        fbb.emit_func_output(out)
    return bb.add_func(fbb.get()[name], name)
