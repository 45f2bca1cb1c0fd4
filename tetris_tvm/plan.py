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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .reorder import LayerPlan, prune_elementwise, prune_weight

if TYPE_CHECKING:
    import torch

__all__ = ["PruningPlan", "SkippedLayer", "prune", "LayerOverride"]

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


def _as_override(value: Any) -> LayerOverride:
    if isinstance(value, LayerOverride):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {"sparsity", "block_size", "skip"}
        if unknown:
            raise ValueError(
                f"unknown override keys {sorted(unknown)}: use sparsity, block_size, skip"
            )
        return LayerOverride(**value)
    raise ValueError(f"an override must be a dict or LayerOverride, got {value!r}")


@dataclass
class PruningPlan(Mapping[str, LayerPlan]):
    """Layer plans keyed by ``state_dict`` weight name, plus the layers that were skipped."""

    layers: dict[str, LayerPlan]
    skipped: list[SkippedLayer] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    _handles: list[Any] = field(default_factory=list, repr=False, compare=False)

    # Mapping protocol ----------------------------------------------------------------------
    def __getitem__(self, name: str) -> LayerPlan:
        try:
            return self.layers[name]
        except KeyError:
            raise KeyError(f"no plan for {name!r}; planned layers: {sorted(self.layers)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

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
        head = f"{'layer':<48} {'shape':<18} {'block':<8} {'kept':>11} {'retained L1':>12}"
        lines = [head, "-" * len(head)]
        for r in self.summary():
            shape = "x".join(map(str, r["shape"]))
            block = "x".join(map(str, r["block"]))
            kept = f"{r['kept_blocks']}/{r['blocks']}"
            lines.append(
                f"{r['name']:<48} {shape:<18} {block:<8} {kept:>11} {r['retained_l1']:>12.4f}"
            )
        for sk in self.skipped:
            lines.append(f"{sk.name:<48} skipped ({sk.kind}): {sk.reason}")
        return "\n".join(lines)

    # applying to a model --------------------------------------------------------------------
    def check(self, model: torch.nn.Module) -> None:
        """Raise ValueError unless every planned weight exists in ``model`` with its shape."""
        params = dict(model.named_parameters())
        for name, lp in self.layers.items():
            if name not in params:
                raise ValueError(f"plan has layer {name!r} but the model has no such parameter")
            shape = tuple(params[name].shape)
            if shape != lp.shape:
                raise ValueError(
                    f"{name}: plan was made for shape {lp.shape} but the model's weight is {shape}"
                )

    def masks(self, device: Any = None) -> dict[str, torch.Tensor]:
        """Masks as float torch tensors (1 = kept), keyed like the plan."""
        import torch

        return {
            n: torch.as_tensor(lp.mask, dtype=torch.float32, device=device)
            for n, lp in self.layers.items()
        }

    def apply(self, model: torch.nn.Module, keep: bool = True) -> torch.nn.Module:
        """Zero the pruned weights of ``model`` in place.

        With ``keep=True`` the masks stay applied while fine-tuning: gradients of pruned
        weights are zeroed and every forward re-applies the mask, so no optimizer (momentum,
        weight decay) can revive them. :meth:`remove` detaches the hooks.
        """
        import torch

        self.check(model)
        self.remove()
        params = dict(model.named_parameters())
        modules = dict(model.named_modules())
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
        """The model's state dict with every planned weight multiplied by its mask (a copy)."""
        self.check(model)
        out = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for name, m in self.masks().items():
            out[name] = out[name] * m.to(out[name].device, out[name].dtype)
        return out

    # persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan to one ``.npz`` file (masks bit-packed)."""
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
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PruningPlan:
        """Read a plan written by :meth:`save`."""
        try:
            data = np.load(path, allow_pickle=False)
            meta = json.loads(bytes(data["meta"]).decode())
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a tetris-tvm pruning plan ({e})") from e
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path}: unknown plan format {meta.get('format')!r}")
        layers = {}
        for i, name in enumerate(meta["layers"]):
            prefix = f"l{i}/"
            state = {k[len(prefix) :]: data[k] for k in data.files if k.startswith(prefix)}
            layers[name] = LayerPlan.from_state(state)
        skipped = [SkippedLayer(**s) for s in meta.get("skipped", [])]
        return cls(layers=layers, skipped=skipped, settings=meta.get("settings", {}))


# -------------------------------------------------------------------------------------------
# building a plan from a model


def _eligible(module: Any) -> tuple[bool, str]:
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


def _clamp_block(block: int | Sequence[int], shape: Sequence[int]) -> tuple[int, int]:
    pair = (block, block) if isinstance(block, (int, np.integer)) else tuple(block)
    if len(pair) != 2:
        raise ValueError(f"block_size must be an int or an (out, in) pair, got {block!r}")
    out = []
    for b, n in zip(pair, shape[:2], strict=True):
        b = int(b)
        if b < 0:
            raise ValueError(f"block size {b} is negative")
        out.append(n if b == 0 else min(b, n))
    return out[0], out[1]


def prune(
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
    progress: bool = False,
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
        progress: show a progress bar.
    """
    if method not in ("tetris", "element"):
        raise ValueError(f"method must be 'tetris' or 'element', got {method!r}")
    rules = [(pat, _as_override(v)) for pat, v in (overrides or {}).items()]
    layers: dict[str, LayerPlan] = {}
    skipped: list[SkippedLayer] = []
    todo = []
    for mod_name, module in model.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if not own:
            continue
        ok, reason = _eligible(module)
        wname = f"{mod_name}.weight" if mod_name else "weight"
        kind = type(module).__name__
        if not ok:
            skipped.append(SkippedLayer(mod_name or "<root>", kind, reason))
            continue
        s, b, skip = sparsity, block_size, False
        for pat, rule in rules:
            if fnmatch.fnmatchcase(wname, pat):
                s = rule.sparsity if rule.sparsity is not None else s
                b = rule.block_size if rule.block_size is not None else b
                skip = skip or rule.skip
        if skip:
            skipped.append(SkippedLayer(mod_name, kind, "skipped by an override"))
            continue
        todo.append((wname, module.weight, s, b))

    iterator: Any = todo
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(todo, desc="pruning", unit="layer")
    for wname, weight, s, b in iterator:
        w = weight.detach().cpu().float().numpy()
        if method == "element":
            layers[wname] = prune_elementwise(w, s, name=wname)
            continue
        layers[wname] = prune_weight(
            w,
            _clamp_block(b, w.shape),
            s,
            reorder=reorder,
            solver=solver,  # type: ignore[arg-type]
            balanced=balanced,
            permute=(permute or {}).get(wname, (True, True)),
            name=wname,
        )
    settings = {
        "sparsity": sparsity,
        "block_size": list(block_size) if not isinstance(block_size, int) else block_size,
        "reorder": reorder,
        "method": method,
        "solver": solver,
        "balanced": balanced,
    }
    return PruningPlan(layers=layers, skipped=skipped, settings=settings)
