"""Torch side of pruning: a :class:`PruningPlan` for every eligible layer of a model.

Eligible layers are ``nn.Linear`` and ``nn.Conv2d`` with ``groups=1``; every other module that
owns parameters is listed in :attr:`PruningPlan.skipped` with the reason. Plans are keyed by
the weight's ``state_dict`` name (``"fc1.weight"``), hold masks in ORIGINAL coordinates, and
apply to a model in place (the masks stay applied while fine-tuning).
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .reorder import (
    LayerPlan,
    check_block_size,
    prune_elementwise,
    prune_weight,
    retained_fraction,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "PruningPlan", "SkippedLayer", "plan_layers", "select_layers", "LayerOverride",
    "eligible_layer", "clamp_block", "as_override", "with_retained", "remask_plan",
    "parameter_names", "tied_names", "warn_unpruned", "layer_settings",
]

_FORMAT = "tetris-tvm-plan/1"


@dataclass(frozen=True)
class SkippedLayer:
    """A module that owns parameters but is not pruned, and why."""

    name: str
    kind: str
    reason: str


@dataclass(frozen=True)
class LayerOverride:
    """Per-layer settings matched by an ``fnmatch`` pattern on the weight name."""

    sparsity: float | None = None
    block_size: int | tuple[int, int] | None = None
    skip: bool = False


def as_override(value: Any) -> LayerOverride:
    if isinstance(value, LayerOverride):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {"sparsity", "block_size", "skip"}
        if unknown:
            raise ValueError(
                f"unknown override keys {sorted(unknown)}: use sparsity, block_size, skip"
            )
        if value.get("block_size") is not None:
            check_block_size(value["block_size"], "override")
        return LayerOverride(**value)
    raise ValueError(f"an override must be a dict or LayerOverride, got {value!r}")


@dataclass
class PruningPlan(Mapping[str, LayerPlan]):
    """Layer plans keyed by ``state_dict`` weight name, plus the layers that were skipped."""

    layers: dict[str, LayerPlan]
    skipped: list[SkippedLayer] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    # parameter values the plan sets (refitted or fine-tuned), by state_dict name; the masked
    # reference of a plan is the model with these values and the masks applied
    params: dict[str, np.ndarray] = field(default_factory=dict)
    # a parameter the model holds under several names (tied weights) is planned once: its
    # other names map to the key it is planned under, and look it up as well
    aliases: dict[str, str] = field(default_factory=dict)
    # how a build quantizes the planned layers (tetris_tvm.quantization; empty: float32)
    quantization: dict[str, Any] = field(default_factory=dict)
    _handles: list[Any] = field(default_factory=list, repr=False, compare=False)

    # Mapping protocol ----------------------------------------------------------------------
    def __getitem__(self, name: str) -> LayerPlan:
        try:
            return self.layers[self.aliases.get(name, name)]
        except KeyError:
            raise KeyError(f"no plan for {name!r}; planned layers: {sorted(self.layers)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def names_of(self, key: str) -> list[str]:
        """Every name of the parameter planned under ``key`` (the key first)."""
        return [key, *(a for a, k in self.aliases.items() if k == key)]

    # summaries ------------------------------------------------------------------------------
    def summary(self) -> list[dict[str, Any]]:
        """One row per planned layer (what the CLI and reports print)."""
        rows = []
        for name, lp in self.layers.items():
            rows.append(
                {
                    "name": name,
                    "shape": list(lp.shape),
                    "block": list(lp.block_size[:2]),
                    "kept_blocks": lp.kept_blocks,
                    "blocks": lp.n_blocks,
                    "density": lp.density,
                    "retained_l1": lp.retained_l1,
                    "method": lp.method,
                }
            )
        return rows

    def format_table(self) -> str:
        """The per-layer table as aligned text."""
        head = (f"{'layer':<48} {'shape':<18} {'block':<8} {'kept':>11} {'sparsity':>9} "
                f"{'retained L1':>12}")
        lines = [head, "-" * len(head)]
        for r in self.summary():
            shape = "x".join(map(str, r["shape"]))
            block = "x".join(map(str, r["block"]))
            kept = f"{r['kept_blocks']}/{r['blocks']}"
            sparsity = 1.0 - r["kept_blocks"] / r["blocks"] if r["blocks"] else 0.0
            lines.append(
                f"{r['name']:<48} {shape:<18} {block:<8} {kept:>11} {sparsity:>9.3f} "
                f"{r['retained_l1']:>12.4f}"
            )
        for sk in self.skipped:
            lines.append(f"{sk.name:<48} skipped ({sk.kind}): {sk.reason}")
        for alias, key in self.aliases.items():
            lines.append(f"{alias:<48} the same tensor as {key} (tied): pruned with it")
        if self.quantization:
            q = self.quantization
            lines.append(f"{q['scheme']}: {len(q['layers'])} layers, {q['activations']} "
                         f"activations in [{q['qmin']}, {q['qmax']}] ({q['dot']}); "
                         f"{len(q.get('float32', {}))} stay float32")
        return "\n".join(lines)

    def with_params(self, params: Mapping[str, np.ndarray]) -> PruningPlan:
        """A copy of the plan that also sets these parameter values (merged over its own)."""
        merged = {**self.params, **{k: np.asarray(v) for k, v in params.items()}}
        return PruningPlan(
            layers=dict(self.layers),
            skipped=list(self.skipped),
            settings=dict(self.settings),
            params=merged,
            aliases=dict(self.aliases),
            quantization=dict(self.quantization),
        )

    # applying to a model --------------------------------------------------------------------
    def check(self, model: torch.nn.Module) -> None:
        """Raise ValueError unless every planned weight (and every parameter the plan sets)
        exists in ``model`` with its shape (under any of its names, for tied weights)."""
        params = parameter_names(model)
        for name, lp in self.layers.items():
            if name not in params:
                raise ValueError(f"plan has layer {name!r} but the model has no such parameter")
            shape = tuple(params[name].shape)
            if shape != lp.shape:
                raise ValueError(
                    f"{name}: plan was made for shape {lp.shape} but the model's weight is {shape}"
                )
        for name, value in self.params.items():
            if name not in params:
                raise ValueError(f"plan sets {name!r} but the model has no such parameter")
            if tuple(params[name].shape) != tuple(value.shape):
                raise ValueError(
                    f"{name}: plan sets shape {tuple(value.shape)} but the model's parameter is "
                    f"{tuple(params[name].shape)}"
                )

    def load_params(self, model: torch.nn.Module) -> torch.nn.Module:
        """Copy the parameter values the plan carries into ``model`` (in place)."""
        import torch

        if not self.params:
            return model
        params = parameter_names(model)
        with torch.no_grad():
            for name, value in self.params.items():
                p = params[name]
                p.copy_(torch.as_tensor(np.asarray(value), device=p.device).to(p.dtype))
        return model

    def masks(self, device: Any = None) -> dict[str, torch.Tensor]:
        """Masks as float torch tensors (1 = kept), keyed like the plan."""
        import torch

        return {
            n: torch.as_tensor(lp.mask, dtype=torch.float32, device=device)
            for n, lp in self.layers.items()
        }

    def apply(self, model: torch.nn.Module, keep: bool = True) -> torch.nn.Module:
        """Set the plan's parameter values (if it carries any) and zero the pruned weights of
        ``model``, in place; returns ``model``.

        With ``keep=True`` the masks stay applied while fine-tuning: gradients of pruned
        weights are zeroed and every forward re-applies the mask, so no optimizer (momentum,
        weight decay) can revive them. :meth:`remove` detaches the hooks.
        """
        import torch

        self.check(model)
        self.remove()
        self.load_params(model)
        params = parameter_names(model)
        modules = dict(model.named_modules(remove_duplicate=False))
        for name, lp in self.layers.items():
            p = params[name]
            mask = torch.as_tensor(lp.mask, device=p.device).to(p.dtype)
            with torch.no_grad():
                p.mul_(mask)
            if not keep:
                continue
            self._handles.append(p.register_hook(lambda g, m=mask: g * m))
            owner = modules[name.rsplit(".", 1)[0]] if "." in name else model
            pname = name.rsplit(".", 1)[-1]

            def remask(module: Any, _inputs: Any, pname: str = pname, mask: Any = mask) -> None:
                with torch.no_grad():
                    getattr(module, pname).mul_(mask)

            self._handles.append(owner.register_forward_pre_hook(remask))
        return model

    def remove(self) -> None:
        """Detach the hooks installed by :meth:`apply` (the weights stay as they are)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def masked_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with the plan's parameter values and every planned weight
        multiplied by its mask (a copy): the masked reference's weights."""
        import torch

        self.check(model)
        out = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for name, value in self.params.items():
            out[name] = torch.as_tensor(np.asarray(value)).to(out[name].dtype)
        for name, m in self.masks().items():
            out[name] = out[name] * m.to(out[name].device, out[name].dtype)
        for alias, key in self.aliases.items():  # a tied tensor: the same values everywhere
            if alias in out and key in out:
                out[alias] = out[key]
        return out

    # persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan to one ``.npz`` file (masks bit-packed); a path that cannot be
        written is a ValueError naming it."""
        arrays: dict[str, Any] = {}
        names = list(self.layers)
        for i, name in enumerate(names):
            for key, value in self.layers[name].to_state().items():
                arrays[f"l{i}/{key}"] = value
        meta = {
            "format": _FORMAT,
            "layers": names,
            "skipped": [vars(s) for s in self.skipped],
            "settings": self.settings,
            "aliases": self.aliases,
            "quantization": self.quantization,
        }
        for i, name in enumerate(self.params):
            arrays[f"p{i}"] = np.asarray(self.params[name])
        meta["params"] = list(self.params)
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        try:
            with open(path, "wb") as f:
                np.savez_compressed(f, **arrays)
        except OSError as e:
            raise ValueError(f"cannot write the plan to {path}: {e.strerror or e}") from None

    def validate(self, where: str = "plan") -> PruningPlan:
        """Raise ValueError (naming ``where`` and the layer) unless every layer plan is
        consistent (:meth:`~tetris_tvm.reorder.LayerPlan.problem`); returns the plan."""
        for name, lp in self.layers.items():
            problem = lp.problem()
            if problem is not None:
                raise ValueError(f"{where}: layer {name}: {problem}")
        for alias, key in self.aliases.items():
            if key not in self.layers:
                raise ValueError(f"{where}: alias {alias!r} names {key!r}, which has no plan")
        return self

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PruningPlan:
        """Read a plan written by :meth:`save`; a missing, damaged or inconsistent file is an
        error naming the file (and the layer)."""
        import zipfile

        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such plan file")
        try:
            data = np.load(path, allow_pickle=False)
            meta = json.loads(bytes(data["meta"]).decode())
            if not isinstance(meta, dict):
                raise ValueError("its metadata is not a JSON object")
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
            why = "no metadata" if isinstance(e, KeyError) else str(e).splitlines()[0]
            raise ValueError(f"{path}: not a tetris-tvm pruning plan, or a damaged one "
                             f"({why})") from None
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path}: unknown plan format {meta.get('format')!r} (this "
                             f"version reads {_FORMAT})")
        try:
            files = set(data.files)
            layers = {}
            for i, name in enumerate(meta["layers"]):
                prefix = f"l{i}/"
                state = {k[len(prefix):]: data[k] for k in files if k.startswith(prefix)}
                try:
                    layers[name] = LayerPlan.from_state(state)
                except ValueError as e:
                    raise ValueError(f"layer {name}: {e}") from None
            skipped = [SkippedLayer(**s) for s in meta.get("skipped", [])]
            params = {}
            for i, name in enumerate(meta.get("params", [])):
                if f"p{i}" not in files:
                    raise ValueError(f"the values of parameter {name!r} are missing")
                params[name] = data[f"p{i}"]
        except (KeyError, TypeError, ValueError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise ValueError(f"{path}: a damaged pruning plan ({str(e).splitlines()[0]})"
                             ) from None
        plan = cls(layers=layers, skipped=skipped, settings=meta.get("settings", {}),
                   params=params, aliases=dict(meta.get("aliases", {})),
                   quantization=dict(meta.get("quantization", {})))
        return plan.validate(str(path))


# -------------------------------------------------------------------------------------------
# building a plan from a model


def eligible_layer(module: Any) -> tuple[bool, str]:
    """Whether a module is pruned (``nn.Linear``, ``nn.Conv2d`` with groups=1), and why not."""
    import torch.nn as nn

    if type(module) is nn.Linear:
        return True, ""
    if type(module) is nn.Conv2d:
        if module.groups != 1:
            return False, f"grouped conv (groups={module.groups}) is not supported; stays dense"
        return True, ""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return False, f"subclass {type(module).__name__} of Linear/Conv2d is not handled"
    return False, "not a Linear or Conv2d layer"


def parameter_names(model: Any) -> dict[str, Any]:
    """Every parameter of ``model`` under every name it has (a tied weight once per name)."""
    return dict(model.named_parameters(remove_duplicate=False))


def tied_names(model: Any) -> dict[str, str]:
    """For parameters the model holds under several names (tied weights: an embedding and
    its output head, one Linear's weight given to another): each other name -> the name it
    is planned under, the weight name of the first Linear/Conv2d that computes with it (else
    its first name). Empty when nothing is tied."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    layers = {f"{m}.weight" if m else "weight"
              for m, module in model.named_modules(remove_duplicate=False)
              if eligible_layer(module)[0]}
    out: dict[str, str] = {}
    for names in groups.values():
        if len(names) > 1:
            key = next((n for n in names if n in layers), names[0])
            out.update({n: key for n in names if n != key})
    return out


def clamp_block(block: int | Sequence[int], shape: Sequence[int]) -> tuple[int, int]:
    """An ``(out, in)`` block from an int or pair, clamped to the weight's channel axes."""
    checked = check_block_size(block, "block_size")
    pair = checked if isinstance(checked, tuple) else (checked, checked)
    out = []
    for b, n in zip(pair, shape[:2], strict=True):
        b = int(b)
        if b < 0:
            raise ValueError(f"block size {b} is negative")
        out.append(n if b == 0 else min(b, n))
    return out[0], out[1]


def warn_unpruned(name: str, lp: LayerPlan, sparsity: float) -> None:
    """Warn when a layer asked to be pruned keeps every block (its block covers it whole,
    or it has too few blocks for the sparsity): nothing is gained there, silently."""
    unpruned = lp.method != "element" and lp.kept_blocks == lp.n_blocks
    if unpruned and (lp.n_blocks == 1 and sparsity > 0 or sparsity >= 0.25):
        import warnings

        bo, bi = lp.block_size[:2]
        warnings.warn(
            f"{name}: nothing pruned: its {lp.shape[0]}x{lp.shape[1]} weight has "
            f"{lp.n_blocks} block(s) of {bo}x{bi}; use a smaller block_size (or an override) "
            "to prune it", stacklevel=3)


def with_retained(lp: LayerPlan, weight: np.ndarray) -> LayerPlan:
    """``lp`` with its retained L1 measured on ``weight`` (a plan made on importance scores
    reports the fraction of the weight's own magnitude it keeps)."""
    return replace(lp, retained_l1=retained_fraction(weight, lp.mask))


def layer_settings(
    name: str,
    sparsity: float,
    block_size: Any,
    overrides: Mapping[str, Any] | None,
    sparsities: Mapping[str, float] | None = None,
) -> tuple[float, Any, bool]:
    """``(sparsity, block, skip)`` of weight ``name``: the global values with every override
    whose ``fnmatch`` pattern matches applied in order (a later match wins a setting; any
    ``skip`` skips), then the layer's allocated sparsity (``sparsities``, by exact name) if
    it has one. The one place overrides are matched."""
    s, b, skip = sparsity, block_size, False
    for pat, raw in (overrides or {}).items():
        if fnmatch.fnmatchcase(name, pat):
            rule = as_override(raw)
            s = rule.sparsity if rule.sparsity is not None else s
            b = rule.block_size if rule.block_size is not None else b
            skip = skip or rule.skip
    if sparsities and name in sparsities:
        s = float(sparsities[name])
    return s, b, skip


def select_layers(
    model: torch.nn.Module,
    sparsity: float,
    block_size: int | tuple[int, int],
    overrides: Mapping[str, Any] | None = None,
    sparsities: Mapping[str, float] | None = None,
) -> tuple[list[tuple[str, Any, float, Any]], list[SkippedLayer]]:
    """The layers a plan prunes, as ``(weight name, weight, sparsity, block)`` with the
    overrides applied, and the modules that own parameters but are skipped (with why)."""
    skipped: list[SkippedLayer] = []
    todo = []
    tied = tied_names(model)
    for mod_name, module in model.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if not own:
            continue
        ok, reason = eligible_layer(module)
        wname = f"{mod_name}.weight" if mod_name else "weight"
        kind = type(module).__name__
        if not ok:
            skipped.append(SkippedLayer(mod_name or "<root>", kind, reason))
            continue
        s, b, skip = layer_settings(wname, sparsity, block_size, overrides, sparsities)
        if skip:
            skipped.append(SkippedLayer(mod_name, kind, "skipped by an override"))
            continue
        if wname in tied:  # another layer's weight: planned once, under that layer's name
            continue
        todo.append((wname, module.weight, s, b))
    return todo, skipped


def remask_plan(
    layout: PruningPlan,
    importance: Mapping[str, np.ndarray],
    sparsity: float | Mapping[str, float],
    weights: Mapping[str, np.ndarray] | None = None,
) -> PruningPlan:
    """New block masks in the storage order of ``layout``: the E-step alone.

    Every layer keeps ``layout``'s permutations and block sizes; its blocks are chosen anew
    from ``importance`` (a map of the weight's shape, e.g. ``|W|`` of the current weights) at
    ``sparsity`` (one value or one per layer). Gradual pruning uses this between TETRIS plans:
    the permutations (and so what the compiler folds) stay, the masks follow the weights.
    ``weights`` (default ``importance``) measure the retained L1.
    """
    layers = {}
    for name, lp in layout.items():
        s = sparsity[name] if isinstance(sparsity, Mapping) else sparsity
        score = np.asarray(importance[name], dtype=np.float32)
        if lp.method == "element":
            new = prune_elementwise(score, s, name=name)
        else:
            pre = score[np.ix_(*lp.perms)]
            stored = prune_weight(pre, lp.block_size[:2], s, reorder=False,
                                  balanced=lp.balanced, name=name)
            inverse = [np.argsort(p) for p in lp.perms]
            new = replace(stored, mask=stored.mask[np.ix_(*inverse)], perms=lp.perms,
                          block_size=lp.block_size, method=lp.method)
        w = score if weights is None else weights[name]
        layers[name] = with_retained(new, w)
    return PruningPlan(layers=layers, skipped=list(layout.skipped),
                       settings=dict(layout.settings), params=dict(layout.params),
                       aliases=dict(layout.aliases), quantization=dict(layout.quantization))


def plan_layers(
    model: torch.nn.Module,
    sparsity: float = 0.75,
    block_size: int | tuple[int, int] = (32, 32),
    *,
    reorder: bool = True,
    method: str = "tetris",
    solver: str = "assign",
    balanced: bool = False,
    overrides: Mapping[str, Any] | None = None,
    permute: Mapping[str, tuple[bool, bool]] | None = None,
    scores: Mapping[str, np.ndarray] | None = None,
    progress: bool = False,
    sparsities: Mapping[str, float] | None = None,
) -> PruningPlan:
    """Plan the pruning of every eligible layer of ``model`` (the model is not changed).

    Args:
        model: a torch module.
        sparsity: fraction of blocks pruned per layer, in ``[0, 1)``.
        block_size: ``(out, in)`` channel block (an int for square); ``0`` = whole axis. Blocks
            larger than a layer's axis are clamped to the axis for that layer.
        reorder: TETRIS reordering (``False``: plain block pruning).
        method: ``"tetris"`` (block pruning, reordered or not) or ``"element"`` (unstructured
            magnitude pruning, the accuracy baseline).
        solver: M-step solver, ``"assign"`` or ``"swap"``.
        balanced: every block-row keeps the same number of blocks.
        overrides: ``{pattern: {"sparsity": s, "block_size": b, "skip": bool}}`` matched with
            ``fnmatch`` against weight names (``"encoder.*.attention.*"``); later patterns win.
        permute: per weight name, which of the (out, in) axes may be permuted (the compiler
            uses this to avoid runtime gathers at model inputs and outputs).
        scores: per weight name, a nonnegative importance map of the weight's shape that is
            clustered and pruned instead of ``|W|`` (:mod:`tetris_tvm.importance`).
        progress: show a progress bar.
        sparsities: per weight name, an allocated sparsity that replaces the global one and
            the overrides' (:mod:`tetris_tvm.allocation`).

    :func:`tetris_tvm.prune` is the public entry point; it adds calibration-aware importance,
    reconstruction and per-layer sparsity allocation on top of this function.
    """
    if method not in ("tetris", "element"):
        raise ValueError(f"method must be 'tetris' or 'element', got {method!r}")
    check_block_size(block_size, "prune")
    todo, skipped = select_layers(model, sparsity, block_size, overrides, sparsities)
    layers: dict[str, LayerPlan] = {}
    iterator: Any = todo
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(todo, desc="pruning", unit="layer")
    for wname, weight, s, b in iterator:
        w = weight.detach().cpu().float().numpy()
        score = None if scores is None else scores.get(wname)
        if score is not None and tuple(score.shape) != w.shape:
            raise ValueError(f"{wname}: importance shape {tuple(score.shape)} != weight {w.shape}")
        target = w if score is None else np.asarray(score, dtype=np.float32)
        if method == "element":
            lp = prune_elementwise(target, s, name=wname)
            layers[wname] = lp if score is None else with_retained(lp, w)
            continue
        lp = prune_weight(
            target,
            clamp_block(b, w.shape),
            s,
            reorder=reorder,
            solver=solver,  # type: ignore[arg-type]
            balanced=balanced,
            permute=(permute or {}).get(wname, (True, True)),
            name=wname,
        )
        layers[wname] = lp if score is None else with_retained(lp, w)
        warn_unpruned(wname, lp, s)
    settings = {
        "sparsity": sparsity,
        "block_size": list(block_size) if not isinstance(block_size, int) else block_size,
        "reorder": reorder,
        "method": method,
        "solver": solver,
        "balanced": balanced,
    }
    aliases = {a: k for a, k in tied_names(model).items() if k in layers}
    return PruningPlan(layers=layers, skipped=skipped, settings=settings, aliases=aliases)
