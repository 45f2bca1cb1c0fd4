"""Planning: the PruningPlan for the weight layers of ``main`` that the graph can fold away.

:func:`plan_graph` reorders and block-prunes every eligible layer that
:func:`~tetris_tvm.passes.layer_sites.find_layers` finds, choosing per layer which axes may be
permuted so that every permutation can later be folded away: an input axis is fixed to the
permutation its producer already carries, and an output axis is permuted only when all its
consumers can absorb a permutation (elementwise / per-channel ops, layer norm, pooling,
flattening, and the input of another weight layer). A layer whose output feeds exactly one
other layer is planned together with it (:func:`~tetris_tvm.reorder.prune_coupled`), and
channel streams shared by several layers (:mod:`tetris_tvm.passes.streams`) may get one
permutation for all of them (:func:`~tetris_tvm.reorder.prune_joint`). ``allow_gathers=True``
permutes both axes of every layer and leaves a runtime gather where nothing absorbs it.

Planning only reads the module; :class:`~tetris_tvm.passes.TetrisPrune` applies the plan.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax

from ..plan import PruningPlan, clamp_block, layer_settings, warn_unpruned, with_retained
from ..reorder import JointMember, LayerPlan, prune_coupled, prune_joint, prune_weight
from ..spec import STREAM_MODES
from .gather_rules import Gather, inverse, is_identity, push_gather
from .layer_sites import LayerGraph, LayerSite, layer_graph
from .streams import Stream

__all__ = ["STREAM_MODES", "plan_graph", "worth_sharing"]



def plan_graph(
    mod: tvm.IRModule,
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
    sparsities: Mapping[str, float] | None = None,
) -> tuple[PruningPlan, list[dict[str, Any]]]:
    """The plan for the weight layers of ``mod["main"]``, and one comparison per stream.

    Args:
        mod: a module as :func:`tetris_tvm.frontend.import_model` makes it (the weights are
            parameters of ``main``); it is only read.
        weights: values of ``main``'s weight parameters, by relax parameter name.
        torch_names: relax parameter name -> torch ``state_dict`` name.
        eligible: torch weight names that may be pruned (default: all linear/conv2d weights
            found).
        sparsity, block_size, prune_options: the plan's settings (``prune_options`` go to
            :func:`tetris_tvm.prune_weight`); ``overrides`` per layer
            ``{pattern: {"sparsity", "block_size", "skip"}}``.
        allow_gathers: permute every axis, leaving runtime gathers where nothing absorbs them.
        streams: how a channel stream shared by several layers (a residual stream) is
            treated: ``"auto"`` also solves each stream with one permutation for all its
            layers (:func:`prune_joint`) and keeps that when it retains more L1 and needs no
            runtime gather; ``"shared"`` keeps it whenever it retains more L1 (accepting
            gathers, e.g. at a model output); ``"separate"`` leaves stream axes unpermuted.
        scores: importance maps by torch weight name (:mod:`tetris_tvm.importance`) that are
            clustered and pruned instead of ``|W|``.
        progress: a progress bar over the layers (for four layers or more).
        sparsities: allocated per-layer sparsities by torch weight name; they replace the
            global sparsity and the overrides' (:mod:`tetris_tvm.allocation`).

    Returns:
        ``(plan, stream_report)``: the PruningPlan keyed by torch weight name, and one record
        per stream considered for a shared permutation (channels, layers, joins, retained L1
        separate / shared, runtime gathers, choice, reason).
    """
    if streams not in STREAM_MODES:
        raise ValueError(f"streams must be one of {STREAM_MODES}, got {streams!r}")
    planner = _Planner(
        layer_graph(mod, weights, torch_names),
        weights,
        eligible=None if eligible is None else set(eligible),
        sparsity=sparsity,
        block_size=block_size,
        prune_options=dict(prune_options or {}),
        allow_gathers=allow_gathers,
        overrides=overrides,
        streams=streams,
        scores=dict(scores or {}),
        progress=progress,
        sparsities=dict(sparsities or {}),
    )
    plan = planner.plan()
    return plan, planner.stream_report


@dataclass
class _Planner:
    """One planning run: the settings, the graph, and the stream records made on the way."""

    graph: LayerGraph
    weights: Mapping[str, np.ndarray]
    eligible: set[str] | None
    sparsity: float
    block_size: int | tuple[int, int]
    prune_options: dict[str, Any]
    allow_gathers: bool
    overrides: Mapping[str, Any] | None
    streams: str
    scores: dict[str, np.ndarray]
    progress: bool
    sparsities: dict[str, float] = field(default_factory=dict)
    stream_report: list[dict[str, Any]] = field(default_factory=list)
    # weights computed with by several layer sites (a module called twice, one parameter in
    # two layers): planned once, without reordering, so every site reads one storage order
    shared: set[str] = field(default_factory=set)

    def planning_weight(self, site: LayerSite) -> np.ndarray:
        """What the plan clusters: the importance scores if given, else the weight."""
        score = self.scores.get(site.torch_name)
        return self.weights[site.weight_param] if score is None else np.asarray(score)

    def settings_for(self, name: str) -> tuple[float, Any, bool]:
        return layer_settings(name, self.sparsity, self.block_size, self.overrides,
                              self.sparsities)

    def absorbable(
        self,
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
        graph = self.graph
        uses = graph.uses.get(var, [])
        if not uses:
            return False  # a function output: the gather would stay
        dummy = Gather(var, np.arange(_ndim_size(var, axis)), axis)
        for user, pos in uses:
            site = graph.layers.get(user)
            if site is not None and pos == 0:
                if site.channel_axis_in != axis or site.torch_name in self.shared:
                    return False
                if reached is not None:
                    reached.append(site)
                continue
            binding = graph.by_var.get(user)
            if binding is None or not isinstance(binding.value, relax.Call):
                return False
            moved = push_gather(binding.value, pos, dummy, graph.const_of)
            if moved is None:
                return False
            if not self.absorbable(user, moved[1].axis, seen, reached):
                return False
        return True

    def plan(self) -> PruningPlan:
        from tqdm.auto import tqdm

        graph = self.graph
        carried: dict[Any, Gather] = {}
        layers: dict[str, LayerPlan] = {}
        coupled: dict[str, LayerPlan] = {}
        pairs: dict[tuple[str, int], str] = {}  # (layer, axis) -> the axis it shares
        todo = {b.var for b in graph.bindings if b.var in graph.layers}
        uses = Counter(site.torch_name for site in graph.layers.values())
        self.shared = {name for name, n in uses.items() if n > 1}
        progress = tqdm(total=len(todo), desc="TETRIS", unit="layer",
                        disable=len(todo) < 4 or not self.progress)
        for b in graph.bindings:
            site = graph.layers.get(b.var)
            if site is None:
                _propagate(b, carried, graph.const_of)
                continue
            progress.update(1)
            name = site.torch_name
            s, block, skip = self.settings_for(name)
            if (self.eligible is not None and name not in self.eligible) or skip:
                continue
            w = self.planning_weight(site)
            if name in self.shared:
                if name not in layers:
                    layers[name] = _plan_layer(w, name, s, block, None, (False, False),
                                               self.prune_options)
                continue
            pending = carried.get(site.x)
            fixed_in = None
            if pending is not None and pending.axis == site.channel_axis_in:
                fixed_in = inverse(pending.idx)
            reached: list[LayerSite] = []
            out_free = self.absorbable(site.out_var, site.channel_axis_out, set(), reached)
            if name in coupled:  # planned together with its producer
                lp = coupled.pop(name)
            else:
                partner = self.partner(name, reached, w, block, s, fixed_in) if out_free else None
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
        for name, lp in layers.items():
            warn_unpruned(name, lp, self.settings_for(name)[0])
        if (
            self.streams != "separate"
            and not self.allow_gathers
            and self.prune_options.get("reorder") is not False
        ):
            self.share_streams(layers, pairs)
        if self.scores:  # report the fraction of each weight's own magnitude kept
            sites = {s.torch_name: s for s in graph.layers.values()}
            for n in layers:
                if n in self.scores:
                    layers[n] = with_retained(layers[n], self.weights[sites[n].weight_param])
        settings = {"sparsity": self.sparsity, "block_size": self.block_size, **self.prune_options}
        return PruningPlan(layers=layers, settings=_jsonable(settings))

    def partner(
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
        if len(reached) != 1 or self.prune_options.get("reorder") is False:
            return None
        other = reached[0]
        if other.torch_name in self.shared or other.torch_name == name:
            return None
        s_b, block_b, skip_b = self.settings_for(other.torch_name)
        if skip_b or (self.eligible is not None and other.torch_name not in self.eligible):
            return None
        wb = self.planning_weight(other)
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
    def share_streams(
        self, layers: dict[str, LayerPlan], pairs: dict[tuple[str, int], str]
    ) -> None:
        """Solve every multi-layer stream with one permutation and keep it where it pays."""
        for st in self.graph.streams:
            if not worth_sharing(st, layers):
                continue
            record, joint = self.joint_stream(st, layers, pairs)
            self.stream_report.append(record)
            if record["choice"] == "shared":
                layers.update(joint)

    def joint_stream(
        self,
        st: Stream,
        layers: dict[str, LayerPlan],
        pairs: dict[tuple[str, int], str],
    ) -> tuple[dict[str, Any], dict[str, LayerPlan]]:
        """The stream's joint plan and how it compares with the separate one."""
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
            "runtime_gathers_shared": self.stream_gathers(st, layers),
            "choice": "separate",
            "reason": "",
        }
        if st.broken:
            record["reason"] = st.broken
            return record, {}
        if self.shared.intersection(names):
            record["reason"] = "a weight of the stream is computed with by several layers"
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
            w = np.asarray(self.planning_weight(sites[n]), dtype=np.float32)
            s, block, _ = self.settings_for(n)
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

    def stream_gathers(self, st: Stream, layers: Mapping[str, Any]) -> int:
        """Runtime gathers a permuted stream leaves: where it starts from something that
        cannot be stored permuted, and where it leaves towards something that cannot absorb
        a gather (e.g. a model output)."""
        graph = self.graph
        gathers = len([r for r in st.roots if r not in st.table_roots])
        gathers += len([p for p in st.producers if p.torch_name not in layers])
        leaked: set[Any] = set()
        for user, var in st.leaks:
            if var in leaked:
                continue
            binding = graph.by_var.get(user)
            value = None if binding is None else binding.value
            if isinstance(value, relax.Call) and isinstance(user, relax.DataflowVar):
                pos = [i for i, a in enumerate(value.args) if a is var or a == var][0]
                dummy = Gather(var, np.arange(st.channels), st.axis_of[var])
                moved = push_gather(value, pos, dummy, graph.const_of)
                if moved is not None and self.absorbable(user, moved[1].axis, set()):
                    continue
            leaked.add(var)
        return gathers + len(leaked)


def worth_sharing(st: Stream, layers: Mapping[str, Any]) -> bool:
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
    wf = np.asarray(w, dtype=np.float32)
    pre = wf if fixed_in is None else np.take(wf, fixed_in, axis=1)
    lp = prune_weight(
        pre, clamp_block(block, wf.shape), sparsity, permute=free, name=name, **options
    )
    if fixed_in is None:
        return lp
    return _unfix(lp, [np.arange(wf.shape[0]), fixed_in])
