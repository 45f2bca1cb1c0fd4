"""Gradual TETRIS pruning that plugs into any training loop: :class:`GradualPruner`.

The pruner owns the sparsity schedule and the masks; the training loop (yours, a Hugging Face
``Trainer``, Lightning, or :func:`tetris_tvm.finetune`) owns the model, the optimizer and the
data. Two calls::

    pruner = tetris_tvm.GradualPruner(model, spec, steps=2000, calibration=batches)
    for batch in data:                      # your loop
        loss = ...; loss.backward(); optimizer.step()
        pruner.step(optimizer)              # masks re-applied, re-planned when the ramp moves
    plan = pruner.finish()                  # final masks + the trained weights
    cm = tetris_tvm.compile(model, example_inputs, plan=plan)

With a Hugging Face ``Trainer``: ``Trainer(..., callbacks=[pruner.trainer_callback()])``.

Schedule: the sparsity ramps from ``initial_sparsity`` to the spec's target over
``ramp * steps`` steps (cubic by default, :func:`sparsity_at`), updated every
``prune_every`` steps. ``permutations="fixed"`` takes the TETRIS storage order from one plan
at the target made on the dense weights, then every update chooses the blocks anew in that
order (the masks follow the weights); ``"replan"`` runs the whole TETRIS plan at every
update.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .calibration import CalibrationBatch, as_batches
from .importance import layer_importance
from .plan import PruningPlan, plan_layers, remask_plan, select_layers
from .spec import PruningSpec

__all__ = ["GradualPruner", "Planner", "SCHEDULES", "sparsity_at"]

Planner = Callable[..., PruningPlan]
SCHEDULES = ("cubic", "linear", "oneshot")


def sparsity_at(
    step: int, steps: int, target: float, initial: float = 0.0, ramp: float = 0.6,
    every: int = 1, schedule: str = "cubic",
) -> float:
    """The scheduled sparsity after ``step`` of ``steps`` (updated every ``every`` steps):
    ``schedule="cubic"`` ramps as Zhu & Gupta, ``"linear"`` linearly, ``"oneshot"`` is the
    target from the start; reaches ``target`` exactly at ``ramp * steps`` and stays there."""
    if schedule == "oneshot":
        return target
    end = max(int(round(ramp * steps)), 1)
    t = end if step >= end else (step // every) * every
    frac = t / end
    if schedule == "cubic":
        return target + (initial - target) * (1.0 - frac) ** 3
    if schedule == "linear":
        return initial + (target - initial) * frac
    raise ValueError(f"schedule must be 'cubic', 'linear' or 'oneshot', got {schedule!r}")


def default_planner(block_size: Any, method: str) -> Planner:
    """Plans every layer with free permutations (:func:`tetris_tvm.plan.plan_layers`)."""

    def plan(model: Any, sparsity: float, scores: Mapping[str, np.ndarray] | None,
             overrides: Mapping[str, Any] | None = None) -> PruningPlan:
        return plan_layers(model, sparsity, block_size, method=method, overrides=overrides,
                           scores=scores)

    return plan


def enforce_masks(model: Any, plan: PruningPlan, optimizer: Any = None) -> None:
    """Pruned weights exactly zero, and their optimizer moments cleared."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, lp in plan.items():
            p = params[name]
            mask = torch.as_tensor(lp.mask, device=p.device).to(p.dtype)
            p.mul_(mask)
            if optimizer is not None:
                for v in optimizer.state.get(p, {}).values():
                    if isinstance(v, torch.Tensor) and v.shape == p.shape:
                        v.mul_(mask)


class GradualPruner:
    """Gradual TETRIS pruning inside the caller's training loop (see the module docstring).

    Args:
        model: the torch model being trained (masked in place).
        spec: what to prune (:class:`~tetris_tvm.PruningSpec`); keyword ``options`` that are
            spec fields (``sparsity``, ``block_size``, ``overrides``, ``importance``,
            ``allocation``, ``method``) replace its fields. ``importance`` defaults to
            ``"activation"`` with calibration data, else ``"magnitude"``; ``allocation`` to
            ``"uniform"`` (``"sensitivity"`` picks per-layer targets once, on the dense
            model and the calibration data).
        steps: the training steps the schedule spans.
        schedule, initial_sparsity, ramp, prune_every: the ramp (:func:`sparsity_at`).
        calibration: a few batches for the activation statistics and the allocation
            (never the data quality is measured on).
        permutations: ``"fixed"`` or ``"replan"`` (module docstring).
        planner: ``planner(model, sparsity, scores, overrides) -> PruningPlan``; default:
            free permutations. :func:`tetris_tvm.graph_planner` plans as ``compile`` does.
        teacher: with ``reconstruct_first``, the dense model whose layer outputs the first
            plan's kept weights are refitted to.
        reconstruct_first: refit the first plan's kept weights on the calibration data.
        broadcast: ``broadcast(plan) -> plan`` shares the main process's plan with the
            others of a distributed run (``None``: one process).
        plans_here: whether this process computes plans (the main rank does).
    """

    def __init__(
        self,
        model: Any,
        spec: PruningSpec | None = None,
        *,
        steps: int,
        schedule: str = "cubic",
        initial_sparsity: float = 0.0,
        ramp: float = 0.6,
        prune_every: int = 50,
        calibration: Any = None,
        permutations: str = "fixed",
        planner: Planner | None = None,
        teacher: Any = None,
        reconstruct_first: bool = False,
        broadcast: Callable[[Any], Any] | None = None,
        plans_here: bool = True,
        **options: Any,
    ) -> None:
        if spec is not None and not isinstance(spec, PruningSpec):
            raise ValueError(f"spec must be a tetris_tvm.PruningSpec, got {type(spec).__name__}")
        spec = (spec or PruningSpec()).with_options("GradualPruner", **options)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if prune_every < 1:
            raise ValueError(f"prune_every must be >= 1, got {prune_every}")
        if not 0.0 < ramp <= 1.0:
            raise ValueError(f"ramp must be in (0, 1], got {ramp}")
        from .reorder import check_sparsity

        self.initial = check_sparsity(initial_sparsity, "initial_sparsity")
        sparsity_at(0, steps, spec.target_sparsity, self.initial, ramp, prune_every, schedule)
        if permutations not in ("fixed", "replan"):
            raise ValueError(f"permutations must be 'fixed' or 'replan', got {permutations!r}")
        if reconstruct_first and teacher is None:
            raise ValueError("reconstruct_first refits to the dense model: pass teacher=")
        self.model, self.spec, self.steps = model, spec, steps
        self.schedule, self.ramp, self.prune_every = schedule, ramp, prune_every
        self.permutations, self.teacher = permutations, teacher
        self.reconstruct_first = reconstruct_first
        self.broadcast, self.plans_here = broadcast, plans_here
        if spec.latency is not None:
            raise ValueError("a latency budget (latency=) is for one-shot plans "
                             "(tetris_tvm.compile / plan_model); gradual pruning trains to a "
                             "sparsity: give sparsity= (and block_size= or overrides)")
        self.target = spec.target_sparsity
        self.batches: list[CalibrationBatch] = (
            as_batches(calibration, "calibration") if calibration is not None else [])
        self.importance = spec.importance or ("activation" if self.batches else "magnitude")
        if self.importance != "magnitude" and not self.batches:
            raise ValueError(f"importance={self.importance!r} needs calibration batches")
        self.planner = planner or default_planner(spec.block, spec.method)
        todo = select_layers(model, self.target, spec.block, spec.overrides)[0]
        self.names = [t[0] for t in todo]
        self.layer_final = {t[0]: float(t[2]) for t in todo}  # overrides applied
        allocation = spec.allocation or "uniform"
        if allocation == "sensitivity" and self.target > 0:
            if not self.batches:
                raise ValueError("allocation='sensitivity' needs calibration batches")
            from .oneshot import prepare_recovery

            self.layer_final.update(prepare_recovery(
                model.eval(), self.target, spec.block, calibration=self.batches,
                importance=self.importance, allocation="sensitivity", reconstruct=True,
                method=spec.method, overrides=spec.overrides,
            ).sparsities or {})
        self.allocation = allocation
        self.steps_done = 0
        self.sparsity = -1.0
        self.plan: PruningPlan | None = None
        self.layout: PruningPlan | None = None

    # -------------------------------------------------------------------------- the schedule
    def scheduled(self, step: int) -> float:
        """The sparsity the schedule sets after ``step`` training steps."""
        return sparsity_at(step, self.steps, self.target, self.initial, self.ramp,
                           self.prune_every, self.schedule)

    def layer_sparsities(self, s: float) -> dict[str, float]:
        """Per-layer sparsities at overall sparsity ``s`` (each layer scaled towards its
        own target)."""
        scale = s / self.target if self.target > 0 else 0.0
        return {n: min(t * scale, t) for n, t in self.layer_final.items()}

    def start(self, optimizer: Any = None) -> PruningPlan:
        """Apply the first plan (called by :meth:`step` when needed); returns it."""
        if self.plan is None:
            self._replan(self.scheduled(self.steps_done), optimizer)
        assert self.plan is not None
        return self.plan

    def step(self, optimizer: Any = None) -> bool:
        """After one optimizer step: pruned weights (and their optimizer moments) back to
        zero, and a new plan when the schedule moved. Returns whether it re-planned."""
        if self.plan is None:
            self.start(optimizer)
        assert self.plan is not None
        enforce_masks(self.model, self.plan, optimizer)
        self.steps_done += 1
        s = self.scheduled(self.steps_done)
        if s != self.sparsity:
            self._replan(s, optimizer)
            return True
        return False

    def reach_target(self, optimizer: Any = None) -> PruningPlan:
        """Plan at the target now if the schedule has not reached it (training stopped
        before the ramp's last update); returns the current plan."""
        if self.plan is None or not np.isclose(self.sparsity, self.target):
            self._replan(self.target, optimizer)
        assert self.plan is not None
        return self.plan

    def finish(self, optimizer: Any = None) -> PruningPlan:
        """The final plan: the target's masks (:meth:`reach_target`) with the trained
        weights as its parameters, applied to the model. ``compile(model, ...,
        plan=plan)`` computes the trained masked model."""
        self.reach_target(optimizer)
        assert self.plan is not None
        params = {n: p.detach().cpu().numpy().copy() for n, p in self.model.named_parameters()}
        final = self.plan.with_params(params)
        self.plan.remove()
        final.apply(self.model)
        self.plan = final
        return final

    # -------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume the schedule (plans as plain data)."""
        return {"steps_done": self.steps_done, "sparsity": self.sparsity,
                "plan": _plan_state(self.plan), "layout": _plan_state(self.layout)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` (the plan's masks are applied to the model)."""
        self.steps_done = int(state["steps_done"])
        self.sparsity = float(state["sparsity"])
        self.layout = _plan_from_state(state.get("layout"))
        if self.plan is not None:
            self.plan.remove()
        self.plan = _plan_from_state(state.get("plan"))
        if self.plan is not None:
            self.plan.apply(self.model)

    # -------------------------------------------------------------------------- integrations
    def trainer_callback(self) -> Any:
        """A ``transformers.TrainerCallback`` that calls :meth:`step` after every optimizer
        step of a Hugging Face ``Trainer`` (with its optimizer) and :meth:`finish` at the
        end of training; the final plan is then ``pruner.plan``."""
        from transformers import TrainerCallback

        pruner = self

        class TetrisPruningCallback(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                pruner.start(kw.get("optimizer"))

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                pruner.step(kw.get("optimizer"))

            def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                pruner.finish(kw.get("optimizer"))

        return TetrisPruningCallback()

    # -------------------------------------------------------------------------- planning
    def _scores(self) -> dict[str, np.ndarray] | None:
        if self.importance == "magnitude":
            return None
        return layer_importance(self.model, self.batches, self.names, self.importance)[1]

    def _replan(self, s: float, optimizer: Any) -> PruningPlan:
        new = self._plan(s) if self.plans_here else None
        if self.broadcast is not None:
            new = self.broadcast(new)
        if self.plan is not None:
            self.plan.remove()
        elif self.reconstruct_first:
            from .reconstruct import reconstruct as reconstruct_plan

            if self.plans_here:
                new, _ = reconstruct_plan(self.teacher, new, self.batches)
            if self.broadcast is not None:
                new = self.broadcast(new)
        assert new is not None
        new.apply(self.model)  # masks stay applied until the next plan (sets refitted params)
        enforce_masks(self.model, new, optimizer)
        self.plan, self.sparsity = new, s
        return new

    def _plan(self, s: float) -> PruningPlan:
        model, spec = self.model, self.spec
        scores = self._scores()
        if self.permutations == "replan" or spec.method == "element":
            layer_overrides = dict(spec.overrides)
            for n, t in self.layer_sparsities(s).items():
                layer_overrides[n] = {"sparsity": t}
            return self.planner(model, s, scores, layer_overrides)
        params = dict(model.named_parameters())
        current = {n: params[n].detach().cpu().float().numpy() for n in self.names}
        if self.layout is None:  # the storage order, from one plan at the target
            final = dict(spec.overrides)
            for n, t in self.layer_final.items():
                final[n] = {"sparsity": t}
            self.layout = self.planner(model, self.target, scores, final)
        weights = {n: current[n] for n in self.layout}
        importance_now = scores or {n: np.abs(w) for n, w in weights.items()}
        sp = self.layer_sparsities(s)
        return remask_plan(self.layout, {n: importance_now[n] for n in self.layout},
                           {n: sp.get(n, s) for n in self.layout}, weights)


def _plan_state(plan: PruningPlan | None) -> Any:
    """A plan as plain data for a checkpoint (masks, permutations, settings)."""
    if plan is None:
        return None
    return {"layers": {n: lp.to_state() for n, lp in plan.items()}, "settings": plan.settings}


def _plan_from_state(state: Any) -> PruningPlan | None:
    if state is None:
        return None
    from .reorder import LayerPlan

    layers = {n: LayerPlan.from_state(s) for n, s in state["layers"].items()}
    return PruningPlan(layers=layers, settings=dict(state["settings"]))
