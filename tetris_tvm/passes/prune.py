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

from ..plan import PruningPlan
from ..reorder import LayerPlan, prune_weight
from ..schedules.kernels import shape_dims
from ._dataflow import const_value, is_const, op_name, rebuild_main, same_dims
from .gather_rules import Gather, inverse, is_identity, push_gather

__all__ = ["TetrisPrune", "LayerSite", "COMPOSITE_LINEAR", "COMPOSITE_CONV2D", "find_layers"]

COMPOSITE_LINEAR = "tetris.linear"
COMPOSITE_CONV2D = "tetris.conv2d"


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


def _ndim(expr: Any) -> int:
    return int(expr.ty.ndim)


def find_layers(func: relax.Function, torch_names: Mapping[str, str]) -> _Analysis:
    """Weight layers of ``func`` (params named in ``torch_names``) and the use lists."""
    params = {p: p.name for p in func.params}
    bindings = [b for blk in func.body.blocks for b in blk.bindings]
    an = _Analysis(bindings)
    transposed: dict[Any, Any] = {}
    for b in bindings:
        v = b.value
        if isinstance(v, relax.Call):
            for i, a in enumerate(v.args):
                an.uses.setdefault(a, []).append((b.var, i))
        elif isinstance(v, relax.Tuple):
            for i, a in enumerate(v.fields):
                an.uses.setdefault(a, []).append((b.var, i))
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
    return an


def _value_lookup(weights: Mapping[str, np.ndarray]) -> Any:
    def const_of(expr: Any) -> np.ndarray | None:
        if is_const(expr):
            return const_value(expr)
        if isinstance(expr, relax.Var) and expr.name in weights:
            return weights[expr.name]
        return None

    return const_of


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

    After the pass ran, :attr:`plan` holds the plan used and :attr:`sites` the layers found.
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
    ) -> None:
        self.given_plan = plan
        self.weights = weights
        self.torch_names = dict(torch_names)
        self.eligible = None if eligible is None else set(eligible)
        self.sparsity = sparsity
        self.block_size = block_size
        self.prune_options = dict(prune_options or {})
        self.allow_gathers = allow_gathers
        self.overrides = overrides
        self.plan: PruningPlan | None = None
        self.sites: list[LayerSite] = []

    # -----------------------------------------------------------------------------------------
    def transform_module(self, mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        func = mod["main"]
        an = find_layers(func, self.torch_names)
        self.sites = list(an.layers.values())
        plan = self.given_plan if self.given_plan is not None else self._compute_plan(an)
        self.plan = plan
        return self._rewrite(mod, an, plan)

    # planning ------------------------------------------------------------------------------
    def _settings_for(self, name: str) -> tuple[float, Any, bool]:
        import fnmatch

        from ..plan import _as_override

        s, b, skip = self.sparsity, self.block_size, False
        for pat, raw in (self.overrides or {}).items():
            rule = _as_override(raw)
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
        const_of = _value_lookup(self.weights)
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
        const_of = _value_lookup(self.weights)
        sites_in_order = [an.layers[b.var] for b in an.bindings if b.var in an.layers]
        todo = {s.out_var for s in sites_in_order}
        progress = tqdm(total=len(todo), desc="TETRIS", unit="layer", disable=len(todo) < 4)
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
            w = self.weights[site.weight_param]
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
        from ..plan import _clamp_block
        from ..reorder import prune_coupled

        if len(reached) != 1 or self.prune_options.get("reorder") is False:
            return None
        other = reached[0]
        s_b, block_b, skip_b = self._settings_for(other.torch_name)
        if skip_b or (self.eligible is not None and other.torch_name not in self.eligible):
            return None
        wb = self.weights[other.weight_param]
        if wb.shape[1] != w.shape[0] or fixed_in is not None:
            return None  # flattened in between (conv -> linear), or our input order is fixed
        ba, bb = _clamp_block(block, w.shape), _clamp_block(block_b, wb.shape)
        if ba[0] != bb[1]:
            return None
        options = {k: v for k, v in self.prune_options.items() if k in ("balanced", "anneal")}
        plan_a, plan_b = prune_coupled(
            w.astype(np.float32), wb.astype(np.float32), ba, bb, s, s_b,
            names=(name, other.torch_name), **options,
        )
        return other.torch_name, (plan_a, plan_b)

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
        counter = [0]

        def rewrite(bb: relax.BlockBuilder, var: Any, value: Any, mapping: dict) -> Any:
            site = by_out.get(var)
            if site is None:
                return value
            lp = plan[site.torch_name]
            w = self.weights[site.weight_param]
            p_out, p_in = lp.perms[0], lp.perms[1]
            stored = (w * lp.mask)[np.ix_(*lp.perms)].astype(w.dtype)
            x = value.args[0]
            ax_in = site.channel_axis_in
            if not is_identity(p_in):
                x = bb.emit(relax.op.take(x, relax.const(p_in.astype("int64")), axis=ax_in))
            counter[0] += 1
            gv = _add_composite(bb, site, x, stored, lp, counter[0])
            y = relax.Call(gv, [x])
            if is_identity(p_out):
                return y
            yp = bb.emit(y)
            return relax.op.take(
                yp, relax.const(inverse(p_out).astype("int64")), axis=site.channel_axis_out
            )

        return rebuild_main(mod, rewrite)


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
    from ..plan import _clamp_block

    wf = np.asarray(w, dtype=np.float32)
    pre = wf if fixed_in is None else np.take(wf, fixed_in, axis=1)
    lp = prune_weight(
        pre, _clamp_block(block, wf.shape), sparsity, permute=free, name=name, **options
    )
    if fixed_in is None:
        return lp
    back = inverse(fixed_in)
    perms = (lp.perms[0], fixed_in[lp.perms[1]], *lp.perms[2:])
    return LayerPlan(
        mask=np.take(lp.mask, back, axis=1),
        perms=perms,
        block_size=lp.block_size,
        retained_l1=lp.retained_l1,
        sparsity=lp.sparsity,
        method=lp.method,
        balanced=lp.balanced,
        block_mask=lp.block_mask,
        history=lp.history,
    )


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
