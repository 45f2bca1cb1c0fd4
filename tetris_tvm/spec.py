"""``PruningSpec``: what to prune and how, declared once for every entry point.

``prune``, ``plan_model``, ``compile``, ``lower``, ``tune``, ``finetune`` hooks and the CLI
all take a spec (``spec=``); their keyword arguments for the common options (``sparsity=``,
``block_size=``, ``calibration=``-dependent recovery, ``quantize=`` ...) are shortcuts that
replace the spec's fields (:meth:`PruningSpec.with_options`). The spec is validated when it
is made, so a misspelt option, an unknown importance or a bad block size fails before any
slow step, with the same message wherever it was given.

The per-layer table (:meth:`PruningSpec.layer_settings`): which layers are pruned, at what
sparsity and in what block, after overrides and clamping to the layer's shape.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .allocation import ALLOCATIONS
from .importance import IMPORTANCE
from .plan import LayerOverride, as_override, clamp_block, layer_settings
from .quantization import ACTIVATION_MODES, QUANTIZE
from .reorder import SOLVERS, check_block_size, check_sparsity

__all__ = [
    "DEFAULT_BLOCK",
    "DEFAULT_SPARSITY",
    "DTYPES",
    "ATTENTION_PRECISIONS",
    "METHODS",
    "PRUNE_OPTIONS",
    "PruningSpec",
    "STREAM_MODES",
]

DEFAULT_SPARSITY = 0.75
DEFAULT_BLOCK = (32, 32)
METHODS: tuple[str, ...] = ("tetris", "element")
STREAM_MODES: tuple[str, ...] = ("auto", "shared", "separate")
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
ATTENTION_PRECISIONS: tuple[str, ...] = ("float32", "int8")
# keyword arguments of tetris_tvm.prune_weight a spec may carry (``prune_options``)
PRUNE_OPTIONS: tuple[str, ...] = ("reorder", "solver", "balanced", "max_iters", "tol",
                                  "anneal", "inits")
# shortcuts that land in prune_options
_PRUNE_SHORTCUTS = ("reorder", "solver", "balanced")


@dataclass(frozen=True)
class PruningSpec:
    """What to prune and how (every field optional; ``None`` means the default).

    Attributes:
        sparsity: fraction of blocks pruned, in ``[0, 1)`` (default 0.75): per layer, or with
            ``allocation="sensitivity"`` over all pruned weights. ``0`` keeps every block.
        block_size: ``(out, in)`` block, an int for square blocks, ``0`` for a whole axis
            (default ``(32, 32)``); clamped to each layer's shape.
        overrides: ``{pattern: {"sparsity", "block_size", "skip"}}`` by ``fnmatch`` pattern on
            the weight name (``"*.intermediate.dense.weight"``); the first match wins.
        importance: ``"magnitude"``, ``"activation"`` or ``"hessian"`` (default:
            ``"activation"`` with calibration data, else ``"magnitude"``).
        reconstruct: refit the kept weights on the calibration data (default: on with it).
        allocation: ``"uniform"``, ``"sensitivity"`` or ``"latency"`` (default:
            ``"latency"`` when ``latency`` is given, else ``"sensitivity"`` with calibration
            data, else ``"uniform"``).
        latency: a latency budget instead of a sparsity: a fraction of the dense build's
            time (``0.5``) or milliseconds (``"20ms"``); every layer's sparsity and block
            shape are chosen from measured kernel times (:mod:`tetris_tvm.latency`). Needs
            calibration data and ``compile`` / ``plan_model``.
        blocks: the block shapes latency allocation chooses from (default
            :data:`tetris_tvm.latency.DEFAULT_CANDIDATES`, or ``block_size`` when given).
        method: ``"tetris"`` (blocks, reordered) or ``"element"`` (unstructured, the quality
            anchor; cannot be compiled to block-sparse kernels).
        prune_options: extra :func:`tetris_tvm.prune_weight` arguments (``reorder``,
            ``solver``, ``balanced``, ``max_iters``, ``tol``, ``anneal``, ``inits``).
        allow_gathers: compiled plans may permute axes that leave a runtime gather.
        streams: channel streams shared by several layers: ``"auto"``, ``"shared"`` or
            ``"separate"`` (see :func:`tetris_tvm.compile`).
        quantize: ``None`` or ``"int8"`` (Linear layers and convs on int8 operands).
        activations: int8 activation scales, ``"dynamic"`` or ``"static"``.
        attention: precision of attention's two matmuls on CPU, ``"float32"`` or ``"int8"``
            (default: ``"int8"`` when ``quantize="int8"``, else ``"float32"``).
        dtype: ``"float32"``, or ``"float16"`` / ``"bfloat16"`` for the pruned layers.
    """

    sparsity: float | None = None
    block_size: int | tuple[int, int] | None = None
    overrides: Mapping[str, LayerOverride] = field(default_factory=dict)
    importance: str | None = None
    reconstruct: bool | None = None
    allocation: str | None = None
    latency: float | str | None = None
    blocks: tuple[tuple[int, int], ...] | None = None
    method: str = "tetris"
    prune_options: Mapping[str, Any] = field(default_factory=dict)
    allow_gathers: bool = False
    streams: str = "auto"
    quantize: str | None = None
    activations: str = "dynamic"
    attention: str | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        where = "spec"
        if self.sparsity is not None:
            object.__setattr__(self, "sparsity", check_sparsity(self.sparsity, where))
        if self.block_size is not None:
            object.__setattr__(self, "block_size", check_block_size(self.block_size, where))
        if not isinstance(self.overrides, Mapping):
            raise ValueError(f"overrides must be a dict of pattern -> settings, got "
                             f"{type(self.overrides).__name__}")
        object.__setattr__(self, "overrides",
                           {str(k): as_override(v) for k, v in self.overrides.items()})
        _one_of("importance", self.importance, (None, *IMPORTANCE))
        _one_of("allocation", self.allocation, (None, *ALLOCATIONS))
        _one_of("method", self.method, METHODS)
        _one_of("streams", self.streams, STREAM_MODES)
        _one_of("quantize", self.quantize, QUANTIZE)
        _one_of("activations", self.activations, ACTIVATION_MODES)
        _one_of("dtype", self.dtype, DTYPES)
        _one_of("attention", self.attention, (None, *ATTENTION_PRECISIONS))
        if self.attention == "int8" and self.quantize != "int8":
            raise ValueError("attention='int8' needs quantize='int8'")
        self._check_latency()
        if self.reconstruct not in (None, True, False):
            raise ValueError(f"reconstruct must be True, False or None, got "
                             f"{self.reconstruct!r}")
        options = dict(self.prune_options or {})
        for key in options:
            if key not in PRUNE_OPTIONS:
                raise ValueError(f"unknown prune option {key!r}{_hint(key, PRUNE_OPTIONS)} "
                                 f"(options: {', '.join(PRUNE_OPTIONS)})")
        if "solver" in options:
            _one_of("solver", options["solver"], SOLVERS)
        object.__setattr__(self, "prune_options", options)
        if self.quantize is not None and self.dtype != "float32":
            raise ValueError("give quantize='int8' or a half dtype, not both")

    def _check_latency(self) -> None:
        from .latency import parse_latency

        if self.latency is not None:
            parse_latency(self.latency)
            if self.allocation not in (None, "latency"):
                raise ValueError(f"latency= is a budget for allocation='latency', not "
                                 f"allocation={self.allocation!r}")
            if self.sparsity is not None:
                raise ValueError("give sparsity or latency, not both: with a latency budget "
                                 "every layer's sparsity is chosen from measured times")
        elif self.allocation == "latency":
            raise ValueError("allocation='latency' needs latency=... (a fraction of the dense "
                             "build's time such as 0.5, or milliseconds such as '20ms')")
        if self.blocks is not None:
            if self.latency is None:
                raise ValueError("blocks= lists the block shapes latency allocation chooses "
                                 "from: give latency=... too (or block_size= for one shape)")
            one = isinstance(self.blocks, int) or (
                len(self.blocks) == 2 and all(isinstance(b, int) for b in self.blocks))
            shapes = [self.blocks] if one else list(self.blocks)
            if not shapes:
                raise ValueError("blocks= must list at least one (rows, cols) block shape")
            checked = []
            for b in shapes:
                c = check_block_size(b, "spec")
                checked.append(c if isinstance(c, tuple) else (int(c), int(c)))
            object.__setattr__(self, "blocks", tuple(checked))

    # ---------------------------------------------------------------------------- building
    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The option names a spec holds (and :meth:`with_options` accepts, with the
        ``reorder`` / ``solver`` / ``balanced`` shortcuts into ``prune_options``)."""
        return tuple(f.name for f in fields(cls))

    def with_options(self, where: str = "spec", **options: Any) -> PruningSpec:
        """This spec with ``options`` replacing its fields (``None`` values leave a field
        as it is). An unknown option is a ``ValueError`` that names the closest one."""
        known = (*self.fields(), *_PRUNE_SHORTCUTS)
        changes: dict[str, Any] = {}
        prune = dict(self.prune_options)
        for name, value in options.items():
            if name not in known:
                raise ValueError(f"{where}: unknown option {name!r}{_hint(name, known)} "
                                 f"(options: {', '.join(known)})")
            if value is None:
                continue
            if name in _PRUNE_SHORTCUTS:
                prune[name] = value
            elif name == "prune_options":
                prune.update(value)
            else:
                changes[name] = value
        if prune != dict(self.prune_options):
            changes["prune_options"] = prune
        try:
            return replace(self, **changes) if changes else self
        except ValueError as exc:
            msg = str(exc).removeprefix("spec: ")
            raise ValueError(f"{where}: {msg}") from None

    # ---------------------------------------------------------------------------- reading
    @property
    def target_sparsity(self) -> float:
        """The sparsity planned for (the default when unset)."""
        return DEFAULT_SPARSITY if self.sparsity is None else float(self.sparsity)

    @property
    def block(self) -> int | tuple[int, int]:
        """The block planned with (the default when unset)."""
        return DEFAULT_BLOCK if self.block_size is None else self.block_size

    @property
    def prunes(self) -> bool:
        """Whether any layer loses blocks (a global or an override sparsity above 0, or a
        latency budget)."""
        return (self.latency is not None or self.target_sparsity > 0
                or any(o.sparsity for o in self.overrides.values()))

    @property
    def candidate_blocks(self) -> tuple[tuple[int, int], ...]:
        """The block shapes latency allocation chooses from: ``blocks``, else
        ``block_size``, else :data:`tetris_tvm.latency.DEFAULT_CANDIDATES`."""
        from .latency import DEFAULT_CANDIDATES

        if self.blocks is not None:
            return self.blocks
        if self.block_size is not None:
            b = self.block_size
            return ((b, b),) if isinstance(b, int) else (tuple(b),)  # type: ignore[return-value]
        return DEFAULT_CANDIDATES

    @property
    def attention_precision(self) -> str:
        """Precision of attention's matmuls (the default: int8 in an int8 build)."""
        return self.attention or ("int8" if self.quantize == "int8" else "float32")

    def recovery(self, calibration_given: bool) -> tuple[str, bool, str]:
        """``(importance, reconstruct, allocation)``, the unset ones chosen by whether
        calibration data is given: with it the full one-shot recipe (activation-aware
        importance, reconstruction, sensitivity allocation); without it, or when nothing is
        pruned, magnitude pruning at uniform sparsity."""
        given = calibration_given and self.prunes
        default = "latency" if self.latency is not None else (
            "sensitivity" if given else "uniform")
        return (
            self.importance or ("activation" if given else "magnitude"),
            bool(self.reconstruct) if self.reconstruct is not None else given,
            self.allocation or default,
        )

    def layer_settings(self, name: str, shape: tuple[int, ...]
                       ) -> tuple[float, tuple[int, int]] | None:
        """``(sparsity, block)`` of weight ``name`` of ``shape`` after the overrides and
        clamping to the shape, or ``None`` when an override skips it."""
        sparsity, block, skip = layer_settings(name, self.target_sparsity, self.block,
                                               self.overrides)
        return None if skip else (float(sparsity), clamp_block(block, shape))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (what plans and results record)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "overrides":
                value = {k: {kk: vv for kk, vv in vars(o).items() if vv not in (None, False)}
                         for k, o in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out


def _one_of(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        shown = (" or ".join(map(repr, allowed)) if len(allowed) <= 2 and None in allowed
                 else f"one of {[a for a in allowed if a is not None]}"
                 + (" or None" if None in allowed else ""))
        raise ValueError(f"{name} must be {shown}, got {value!r}")


def _hint(name: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
