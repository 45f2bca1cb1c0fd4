"""Gradual TETRIS pruning with knowledge distillation from the dense model: ``finetune``.

One-shot pruning (:func:`tetris_tvm.prune`) costs minutes; training costs more and recovers
more. The recipe (Zhu & Gupta's gradual magnitude pruning, as SparseML's GMP and the
block-movement-pruning papers use it, with TETRIS blocks):

- the sparsity follows a cubic ramp ``s_t = s_f + (s_0 - s_f) (1 - t / T_ramp)^3`` from
  ``initial_sparsity`` to the target over the first ``ramp`` fraction of the steps, updated
  every ``prune_every`` steps, then stays at the target while training goes on;
- at every pruning step the TETRIS plan is made anew on the current weights (reorder + mask,
  activation-aware with a few training batches), so the blocks follow the weights as they
  move; between pruning steps the masks stay applied (gradients masked, pruned weights zeroed
  again after every optimizer step, optimizer moments of pruned weights cleared);
- the loss is distillation from the dense teacher (a frozen copy of the input model): for
  outputs of shape (batch, seq, hidden), the MSE of the hidden states (normalised by the
  teacher's mean square) plus ``1 - cosine`` of the mean-pooled embeddings; for logits, the
  KL divergence of temperature-softened distributions plus the cross-entropy when the batch
  carries labels;
- AdamW, linear warmup and linear decay, gradient clipping, fixed seeds.

Long runs behave: a progress bar with the loss and current sparsity, checkpoints every
``checkpoint_every`` steps (``resume=True`` continues from the newest and ends with the same
weights as an uninterrupted run), Ctrl-C stops at the next step after writing a checkpoint,
a held-out evaluation (``evaluate``) every ``eval_every`` steps, and a NaN loss stops with an
error without overwriting the last good checkpoint. Under ``torchrun`` (an initialised
``torch.distributed`` process group) every rank trains on its slice of each batch with
DistributedDataParallel; plans are made on rank 0 and broadcast, checkpoints written once.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import CalibrationBatch, as_batches, model_output
from .gradual import GradualPruner, Planner, sparsity_at
from .plan import PruningPlan
from .reorder import check_sparsity
from .spec import PruningSpec

__all__ = ["finetune", "sparsity_at", "FinetuneInterrupted", "Planner", "FinetuneConfig"]
_CKPT = "checkpoint.pt"


class FinetuneInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`finetune` cleanly; ``step`` and ``checkpoint`` say where."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"fine-tuning stopped at step {step}"
                         + (f"; resume from {checkpoint}" if checkpoint else ""))
        self.step = step
        self.checkpoint = checkpoint


@dataclass
class FinetuneConfig:
    """Training settings (see :func:`finetune`)."""

    steps: int
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.05
    clip: float = 1.0
    temperature: float = 2.0
    task_weight: float = 0.5
    initial_sparsity: float = 0.0
    ramp: float = 0.6
    prune_every: int = 50
    schedule: str = "cubic"
    importance: str = "activation"
    importance_batches: int = 4
    seed: int = 0
    hidden_weight: float = 1.0


# ---------------------------------------------------------------------------------------------
# batches, outputs, losses


def _split_labels(batch: CalibrationBatch) -> tuple[CalibrationBatch, Any]:
    """Labels of a batch: a ``labels`` key, or a trailing 1-D integer tensor of a tuple."""
    import torch

    if "labels" in batch.kwargs:
        kwargs = dict(batch.kwargs)
        labels = kwargs.pop("labels")
        return CalibrationBatch(batch.args, kwargs, batch.token_mask), labels
    if len(batch.args) >= 2:
        last = batch.args[-1]
        first = batch.args[0]
        if (last.ndim == 1 and not torch.is_floating_point(last)
                and last.shape[0] == first.shape[0]):
            return CalibrationBatch(batch.args[:-1], batch.kwargs, batch.token_mask), last
    return batch, None


def _shard(batch: CalibrationBatch, labels: Any, rank: int, world: int) -> tuple[Any, Any]:
    """This rank's contiguous slice of a batch (dim 0 of every tensor)."""
    if world == 1:
        return batch, labels
    n = batch.size
    if n % world:
        raise ValueError(f"a batch of {n} does not split evenly over {world} processes")
    lo, hi = rank * n // world, (rank + 1) * n // world
    args = tuple(a[lo:hi] for a in batch.args)
    kwargs = {k: v[lo:hi] for k, v in batch.kwargs.items()}
    mask = None if batch.token_mask is None else batch.token_mask[lo:hi]
    return CalibrationBatch(args, kwargs, mask), None if labels is None else labels[lo:hi]


def hidden_modules(model: Any, hidden_layers: str | Sequence[str] | None) -> list[str]:
    """Names of the modules whose outputs are distilled besides the model's output.

    ``None``: none. ``"auto"``: the blocks of the model's longest ``nn.ModuleList`` (a
    transformer's layers). Otherwise ``fnmatch`` patterns of module names
    (``"encoder.layer.?"``); a pattern that matches nothing is an error.
    """
    import fnmatch

    import torch

    if hidden_layers is None:
        return []
    if hidden_layers == "auto":
        lists = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
        if not lists:
            raise ValueError("hidden_layers='auto' needs a model with an nn.ModuleList of "
                             "blocks; name the modules with patterns instead")
        name, blocks = max(lists, key=lambda t: len(t[1]))
        return [f"{name}.{i}" if name else str(i) for i in range(len(blocks))]
    patterns = [hidden_layers] if isinstance(hidden_layers, str) else list(hidden_layers)
    names = [n for n, _ in model.named_modules() if n]
    out: list[str] = []
    for pat in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise ValueError(f"hidden_layers pattern {pat!r} matches no module of the model")
        out += [n for n in hits if n not in out]
    return out


class _Taps:
    """Forward hooks that keep the first tensor output of named modules, per forward call."""

    def __init__(self, model: Any, names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        self.outputs: dict[str, Any] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Callable[..., None]:
        def keep(_module: Any, _inputs: Any, output: Any) -> None:
            while isinstance(output, (tuple, list)) and output:
                output = output[0]
            self.outputs[name] = output

        return keep

    def take(self) -> dict[str, Any]:
        out, self.outputs = self.outputs, {}
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _masked_nmse(s: Any, t: Any, mask: Any) -> Any:
    """MSE of ``s`` against ``t`` over the tokens in ``mask``, over ``t``'s mean square."""
    m = mask.unsqueeze(-1).float()
    n = (m.sum() * s.shape[-1]).clamp(min=1.0)
    return ((((s - t) ** 2) * m).sum() / n) / ((((t**2) * m).sum() / n).clamp(min=1e-8))


def distillation_loss(
    student: Any, teacher: Any, batch: CalibrationBatch, labels: Any, cfg: FinetuneConfig,
    taps: tuple[_Taps, _Taps] | None = None,
) -> Any:
    """The distillation loss of one batch (see the module docstring); ``taps`` (student's,
    teacher's) add the normalised MSE of intermediate outputs, weighted ``cfg.hidden_weight``."""
    import torch
    import torch.nn.functional as F

    s = model_output(student(*batch.args, **batch.kwargs)).float()
    with torch.no_grad():
        t = model_output(teacher(*batch.args, **batch.kwargs)).float()
    if s.shape != t.shape:
        raise ValueError(f"student output {tuple(s.shape)} != teacher output {tuple(t.shape)}")
    hidden = None
    if taps is not None:
        hs, ht = taps[0].take(), taps[1].take()
        terms = []
        for name, t_out in ht.items():
            s_out = hs[name].float()
            t_out = t_out.float()
            if (s_out.ndim == 3 and batch.token_mask is not None
                    and tuple(batch.token_mask.shape) == tuple(s_out.shape[:2])):
                terms.append(_masked_nmse(s_out, t_out, batch.token_mask))
            else:
                terms.append(F.mse_loss(s_out, t_out) / t_out.pow(2).mean().clamp(min=1e-8))
        if terms:
            hidden = cfg.hidden_weight * torch.stack(terms).mean()
    loss = _output_loss(s, t, batch, labels, cfg)
    return loss if hidden is None else loss + hidden


def _output_loss(s: Any, t: Any, batch: CalibrationBatch, labels: Any,
                 cfg: FinetuneConfig) -> Any:
    import torch
    import torch.nn.functional as F

    if s.ndim == 3:  # (batch, seq, hidden): an encoder
        mask = batch.token_mask
        if mask is None or tuple(mask.shape) != tuple(s.shape[:2]):
            mask = torch.ones(s.shape[:2], dtype=torch.bool)
        mse = _masked_nmse(s, t, mask)
        m = mask.unsqueeze(-1).float()
        ps = (s * m).sum(1) / m.sum(1).clamp(min=1.0)
        pt = (t * m).sum(1) / m.sum(1).clamp(min=1.0)
        cos = 1.0 - F.cosine_similarity(ps, pt, dim=-1).mean()
        return mse + cos
    if s.ndim == 2:  # logits
        temp = cfg.temperature
        kl = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1),
                      reduction="batchmean", log_target=True) * temp * temp
        if labels is None:
            return kl
        return (1 - cfg.task_weight) * kl + cfg.task_weight * F.cross_entropy(s, labels)
    return F.mse_loss(s, t) / t.pow(2).mean().clamp(min=1e-8)


# ---------------------------------------------------------------------------------------------
# checkpoints and Ctrl-C


class _StopFlag:
    """Set by SIGINT while training (the main thread only); the loop checks it every step."""

    def __init__(self) -> None:
        self.set = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_: Any) -> None:
        if self.set:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.set = True
        print("\nCtrl-C: stopping after this step (press again to abort at once)", flush=True)

    def __exit__(self, *_: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _save(path: Path, state: dict[str, Any]) -> None:
    import torch

    tmp = path / (_CKPT + ".tmp")
    try:
        path.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        tmp.replace(path / _CKPT)  # never leaves a half-written checkpoint behind
    except (OSError, RuntimeError) as e:  # a full disk is torch's RuntimeError
        tmp.unlink(missing_ok=True)
        why = e.strerror if isinstance(e, OSError) and e.strerror else "the write failed"
        raise OSError(f"cannot write the checkpoint to {path}: {why} (is the disk full?); "
                      "the last good checkpoint is kept") from None


def _jsonable_block(block: Any) -> Any:
    return list(block) if isinstance(block, (tuple, list)) else block


def _check_resume(path: Path, saved: Mapping[str, Any] | None, run: Mapping[str, Any]) -> None:
    """A checkpoint resumes only the run that wrote it: the same target, steps, blocks and
    schedule (else the resumed run is neither the old one nor the new one)."""
    if saved is None:
        return  # written before runs were recorded: nothing to compare
    differ = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in run.items()
              if k in saved and saved[k] != v]
    if differ:
        raise ValueError(f"{path} was written by a run with other settings ({'; '.join(differ)})"
                         ": resume with the same settings, or start afresh in another "
                         "checkpoint_dir")


# ---------------------------------------------------------------------------------------------
# the loop


def finetune(
    model: Any,
    data: Any,
    sparsity: float | None = None,
    block_size: int | tuple[int, int] | None = None,
    *,
    steps: int,
    spec: PruningSpec | None = None,
    teacher: Any = None,
    schedule: str = "cubic",
    initial_sparsity: float = 0.0,
    ramp: float = 0.6,
    prune_every: int = 50,
    importance: str | None = None,
    allocation: str | None = None,
    reconstruct_first: bool = False,
    permutations: str = "fixed",
    dropout: bool = False,
    calibration: Any = None,
    method: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    planner: Planner | None = None,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    warmup: float = 0.05,
    clip: float = 1.0,
    temperature: float = 2.0,
    task_weight: float = 0.5,
    hidden_layers: str | Sequence[str] | None = None,
    hidden_weight: float = 1.0,
    evaluate: Callable[[Any], Mapping[str, float]] | None = None,
    eval_every: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 200,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    on_step: Callable[[int, Any, PruningPlan], None] | None = None,
) -> tuple[Any, PruningPlan]:
    """Prune ``model`` gradually to ``sparsity`` while distilling from its dense self.

    This is our training loop around a :class:`tetris_tvm.GradualPruner` (the schedule and
    the masks); to keep your own loop or trainer, use the pruner directly.

    Args:
        model: the dense torch model; it is trained IN PLACE (pass a copy to keep it).
        data: training batches (a sequence of what the model takes: tensors, tuples or dicts
            such as a tokenizer's output; a ``labels`` key, or a trailing 1-D integer tensor
            of a tuple, are labels for the task loss). Batches are visited in a fresh seeded
            order every epoch. Never the data quality is measured on.
        sparsity: the target, reached exactly at ``ramp * steps``.
        block_size: TETRIS block (``(out, in)``; an int for square; default ``(32, 32)``).
        steps: optimizer steps.
        spec: what to prune (:class:`~tetris_tvm.PruningSpec`); ``sparsity``, ``block_size``,
            ``importance``, ``allocation``, ``method`` and ``overrides`` given here replace
            its fields.
        teacher: the model to distil from (default: a frozen copy of ``model`` as given).
        schedule, initial_sparsity, ramp, prune_every: the sparsity ramp (:func:`sparsity_at`).
        importance: what each re-planning clusters (``"activation"`` uses a few training
            batches; ``"magnitude"`` is ``|W|``).
        allocation: ``"uniform"`` (every layer follows the ramp to ``sparsity``) or
            ``"sensitivity"``: per-layer targets chosen once on the dense model and a few
            training batches (:mod:`tetris_tvm.allocation`; they meet ``sparsity`` over all
            pruned weights), each layer ramping to its own.
        reconstruct_first: refit the kept weights of the FIRST plan to the dense layers'
            outputs (:mod:`tetris_tvm.reconstruct`, on a few training batches) before
            training: with ``schedule="oneshot"`` training starts from the one-shot recovered
            model instead of the plain masked one.
        permutations: ``"fixed"`` (default): the TETRIS permutations come from one plan at
            the target sparsity made on the dense model; every pruning step then chooses the
            blocks anew in that storage order (:func:`tetris_tvm.plan.remask_plan`), so the
            masks follow the weights without reshuffling them. ``"replan"``: every pruning
            step runs the whole TETRIS plan again (permutations too), which reshuffles which
            weights share a block and prunes many trained weights at once.
        dropout: train with the model's dropout active (``model.train()``); by default the
            student trains in eval mode (no dropout, frozen batch-norm statistics), which
            matches the teacher's outputs faster on a short budget.
        calibration: batches for the importance statistics, the allocation and the first
            reconstruction (default: four batches spread over ``data``).
        method: ``"tetris"``, or ``"element"`` (unstructured; the accuracy anchor).
        overrides: per-layer overrides, as for :func:`tetris_tvm.prune`.
        planner: ``planner(model, sparsity, scores, overrides) -> PruningPlan``; the default
            plans every layer with free permutations. :func:`tetris_tvm.graph_planner` plans the way
            ``compile`` does (permutations that fold away, no runtime gathers).
        lr, weight_decay, warmup, clip: AdamW, warmup fraction then linear decay, gradient
            norm clipping.
        temperature, task_weight: logit distillation temperature; weight of the label loss.
        hidden_layers, hidden_weight: also distil these modules' outputs (normalised MSE,
            mean over the modules, times ``hidden_weight``): ``"auto"`` for a transformer's
            blocks, or module-name patterns (:func:`hidden_modules`). Intermediate targets
            give every layer its own signal, which helps most when whole blocks are pruned.
        evaluate: ``evaluate(model) -> metrics`` on held-out data, run every ``eval_every``
            steps and at the end; results are printed and kept in ``plan.settings``.
        checkpoint_dir, checkpoint_every, resume: checkpoints (model, optimizer, schedule,
            plan, RNG state, history); ``resume`` continues from the newest one.
        seed: seeds torch's RNG and the batch order.
        progress: a progress bar with the loss and the current sparsity.
        on_step: ``on_step(steps_done, model, plan)`` after every step (after its checkpoint),
            with the plan that step trained with, e.g. for logging.

    Returns:
        ``(model, plan)``: the fine-tuned model with the final masks applied (and kept by
        hooks; ``plan.remove()`` detaches them) and the final plan, which carries the
        fine-tuned parameters: ``compile(model, ..., plan=plan)`` computes exactly the
        fine-tuned masked model.
    """
    import torch

    if spec is not None and not isinstance(spec, PruningSpec):
        raise ValueError(f"finetune: spec must be a tetris_tvm.PruningSpec, got "
                         f"{type(spec).__name__}")
    spec = (spec or PruningSpec()).with_options(
        "finetune", sparsity=sparsity, block_size=block_size, overrides=overrides,
        importance=importance, allocation=allocation, method=method)
    if spec.sparsity is None:
        raise ValueError("finetune: give the target sparsity (sparsity= or spec=)")
    target, block_size, method = spec.sparsity, spec.block, spec.method
    importance = spec.importance or "activation"
    allocation = spec.allocation or "uniform"
    initial = check_sparsity(initial_sparsity, "finetune initial_sparsity")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr (the peak learning rate) must be > 0, got {lr}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True continues from checkpoint_dir: give the folder the "
                         "interrupted run wrote")
    batches = as_batches(data, "training data")
    cfg = FinetuneConfig(steps=steps, lr=lr, weight_decay=weight_decay, warmup=warmup,
                         clip=clip, temperature=temperature, task_weight=task_weight,
                         initial_sparsity=initial, ramp=ramp, prune_every=prune_every,
                         schedule=schedule, importance=importance, seed=seed,
                         hidden_weight=hidden_weight)
    dist = torch.distributed if torch.distributed.is_available() else None
    distributed = dist is not None and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    main_rank = rank == 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    torch.manual_seed(seed)
    if teacher is None:
        teacher = copy.deepcopy(model)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    tapped = hidden_modules(model, hidden_layers)
    if calibration is not None:
        imp_batches = [_split_labels(b)[0] for b in as_batches(calibration)]
    else:
        k = min(len(batches), cfg.importance_batches)
        imp_batches = [_split_labels(batches[i * len(batches) // k])[0] for i in range(k)]

    def broadcast(plan: Any) -> Any:
        box = [plan]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    pruner = GradualPruner(
        model, steps=steps, schedule=schedule, initial_sparsity=initial, ramp=ramp,
        prune_every=prune_every, calibration=imp_batches, permutations=permutations,
        planner=planner, teacher=teacher, reconstruct_first=reconstruct_first,
        broadcast=broadcast if distributed else None, plans_here=main_rank,
        spec=spec.with_options(importance=importance, allocation=allocation),
    )

    model.train(dropout)
    student = model
    if distributed:
        student = torch.nn.parallel.DistributedDataParallel(model)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    warm = max(int(round(warmup * steps)), 1)

    def lr_factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (steps - step) / max(steps - warm, 1))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    start = 0
    history: list[dict[str, Any]] = []
    run = {"sparsity": target, "steps": steps, "block_size": _jsonable_block(block_size),
           "method": method, "seed": seed, "initial_sparsity": initial, "ramp": ramp,
           "prune_every": prune_every}
    if resume and ckpt_dir is not None and (ckpt_dir / _CKPT).exists():
        try:
            state = torch.load(ckpt_dir / _CKPT, weights_only=False)
        except Exception as e:  # noqa: BLE001 - torch raises several kinds for a bad file
            raise ValueError(f"{ckpt_dir / _CKPT}: not a readable checkpoint "
                             f"({str(e).strip().splitlines()[0] if str(e).strip() else e!r})"
                             ) from None
        _check_resume(ckpt_dir / _CKPT, state.get("run"), run)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start, history = state["step"], state["history"]
        pruner.load_state_dict({"steps_done": start, "sparsity": state["sparsity"],
                                "plan": state["plan"], "layout": state.get("layout")})
        if main_rank and progress:
            print(f"resumed from {ckpt_dir / _CKPT} at step {start}", flush=True)

    def checkpoint(step: int) -> Path | None:
        if ckpt_dir is None:
            return None
        if main_rank:
            saved = pruner.state_dict()
            _save(ckpt_dir, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                "step": step, "sparsity": saved["sparsity"], "history": history,
                "plan": saved["plan"], "layout": saved["layout"], "run": run,
            })
        if distributed:
            dist.barrier()
        return ckpt_dir / _CKPT

    def run_eval(step: int) -> None:
        if evaluate is None or not main_rank:
            return
        model.eval()
        try:
            metrics = dict(evaluate(model))
        finally:
            model.train(dropout)
        history.append({"step": step, "sparsity": pruner.sparsity, **metrics})
        text = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        print(f"step {step}: sparsity {pruner.sparsity:.3f}, {text}", flush=True)

    bar: Any = None
    if progress and main_rank:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc="fine-tuning", unit="step")
    loss_value = float("nan")
    taps = (_Taps(model, tapped), _Taps(teacher, tapped)) if tapped else None
    pruner.start(optimizer)
    with _StopFlag() as stop, contextlib.ExitStack() as hooks:
        for t in taps or ():
            hooks.callback(t.close)  # the hooks go however the loop ends
        for step in range(start, steps):
            epoch, pos = divmod(step, len(batches))
            order = np.random.default_rng([seed, epoch]).permutation(len(batches))
            batch, labels = _split_labels(batches[int(order[pos])])
            batch, labels = _shard(batch, labels, rank, world)
            optimizer.zero_grad(set_to_none=True)
            try:
                loss = distillation_loss(student, teacher, batch, labels, cfg, taps)
            except RuntimeError as e:
                raise ValueError(f"training batch {int(order[pos])}: the model could not run "
                                 f"it: {e}") from e
            if not bool(torch.isfinite(loss.detach())):
                raise FloatingPointError(
                    f"the loss became {float(loss.detach())} at step {step}; stopped without "
                    "writing a checkpoint (the last one is kept). Lower lr or check the data."
                )
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            scheduler.step()
            trained_with = pruner.plan
            pruner.step(optimizer)
            loss_value = float(loss.detach())
            done = step + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", sparsity=f"{pruner.sparsity:.3f}")
            if eval_every and done % eval_every == 0 and done < steps:
                run_eval(done)
            if ckpt_dir is not None and checkpoint_every and done % checkpoint_every == 0:
                checkpoint(done)
            if on_step is not None:
                on_step(done, model, trained_with)
            if stop.set:
                where = checkpoint(done)
                if bar is not None:
                    bar.close()
                raise FinetuneInterrupted(done, where)
    if bar is not None:
        bar.close()
    pruner.reach_target(optimizer)  # steps too few for the ramp's last update
    run_eval(steps)
    if ckpt_dir is not None:
        checkpoint(steps)
    final = pruner.finish(optimizer)
    final.settings.update(
        finetune={"steps": steps, "lr": lr, "schedule": schedule, "ramp": ramp,
                  "allocation": allocation, "permutations": permutations,
                  "prune_every": prune_every, "importance": importance, "seed": seed,
                  "hidden_layers": tapped, "hidden_weight": hidden_weight,
                  "final_loss": loss_value, "history": history, "world_size": world},
    )
    model.eval()
    return model, final
