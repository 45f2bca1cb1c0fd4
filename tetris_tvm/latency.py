"""Latency-aware allocation: per-layer sparsity AND block shape chosen to meet a latency budget.

``allocation="sensitivity"`` meets a sparsity target; what a user usually wants is "this fast,
as good as possible". Pruned layers do not cost what their kept weights say: a block shape's
speed depends on the kernel and the precision (narrow column blocks run as fast as square ones
in float32 but not in int8), and the attention, norms and quantizers a model spends the rest of
its time in do not shrink at all. ``allocation="latency"`` therefore works from measured
times (docs/quality.md, "A latency budget instead of a sparsity"):

1. every pruned layer's kernel is built alone for the target at each candidate block shape x
   a grid of sparsities (and dense), with the layer's real input shape and precision, and
   timed; times are cached on disk per target, so a second model with the same layer shapes
   measures nothing (:class:`TimingCache`);
2. the whole model is built and timed twice, dense and with every layer at one reference
   option (the first candidate at 50%): the two fit what pruning cannot shrink (attention,
   norms, embeddings: :attr:`LatencyTable.fixed`) and how a kernel's time in the model
   compares with its time alone (:attr:`LatencyTable.scale`);
3. every option's quality cost is measured on calibration data as for sensitivity allocation
   (the model's output error with that one layer pruned that way);
4. :func:`allocate_latency` picks one option per layer (or dense) so the predicted time meets
   the budget at the least total cost: a multiple-choice knapsack, solved by a Lagrange
   multiplier on time (bisected to the smallest that meets the budget) and then filled up
   greedily with the time that is left.

The budget is a fraction of the dense build's time (``latency=0.5``) or milliseconds
(``latency="20ms"``).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Option",
    "LATENCY_GRID",
    "DEFAULT_CANDIDATES",
    "LatencyTable",
    "TimingCache",
    "default_cache_path",
    "parse_latency",
    "budget_seconds",
    "layer_signature",
    "measure_latency",
    "allocate_latency",
    "KernelTimer",
    "layer_input_shapes",
    "compiled_timer",
]

LATENCY_GRID: tuple[float, ...] = (0.25, 0.5, 0.75, 0.875)
"""Sparsities each candidate block shape is measured at (time and quality)."""

DEFAULT_CANDIDATES: tuple[tuple[int, int], ...] = ((32, 4), (16, 4), (32, 1))
"""Block shapes tried when none are given: four-input columns suit the int8 dot instructions,
single-input columns keep the most quality; the measured times decide between them."""


@dataclass(frozen=True, order=True)
class Option:
    """One way to prune a layer: a ``(rows, cols)`` block at a sparsity."""

    block: tuple[int, int]
    sparsity: float

    def label(self) -> str:
        return f"{self.sparsity:.0%} {self.block[0]}x{self.block[1]}"


def parse_latency(value: Any) -> tuple[str, float]:
    """``("fraction", f)`` for a float in (0, 1] (of the dense build's time) or ``("ms", t)``
    for a string such as ``"20ms"``; anything else is a ``ValueError``."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text.endswith("ms"):
            try:
                ms = float(text[:-2])
            except ValueError:
                ms = float("nan")
            if math.isfinite(ms) and ms > 0:
                return "ms", ms
        raise ValueError(f"latency must be a fraction of the dense build's time in (0, 1] or "
                         f"milliseconds as a string like '20ms', got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"latency must be a number in (0, 1] or a string like '20ms', got "
                         f"{type(value).__name__}")
    if not (0.0 < float(value) <= 1.0):
        raise ValueError(f"latency as a fraction of the dense build's time must be in (0, 1], "
                         f"got {value}; give milliseconds as a string ('{value}ms')")
    return "fraction", float(value)


def budget_seconds(latency: Any, dense_seconds: float) -> float:
    """The budget in seconds for ``latency`` (see :func:`parse_latency`)."""
    kind, value = parse_latency(latency)
    return value * dense_seconds if kind == "fraction" else value / 1e3


def layer_signature(module: Any, input_shape: Sequence[int]) -> dict[str, Any]:
    """What a layer's kernel time depends on: its type, weight shape, input shape and (for
    convs) stride, padding, dilation and groups; JSON-able, the cache key's layer part."""
    sig: dict[str, Any] = {
        "type": type(module).__name__,
        "weight": list(module.weight.shape),
        "input": [int(d) for d in input_shape],
        "bias": getattr(module, "bias", None) is not None,
    }
    for attr in ("stride", "padding", "dilation", "groups"):
        if hasattr(module, attr):
            value = getattr(module, attr)
            sig[attr] = list(value) if isinstance(value, tuple) else value
    return sig


def default_cache_path() -> Path:
    """``$TETRIS_TVM_CACHE/latency.json``, else ``~/.cache/tetris_tvm/latency.json``."""
    root = os.environ.get("TETRIS_TVM_CACHE") or Path.home() / ".cache" / "tetris_tvm"
    return Path(root) / "latency.json"


@dataclass
class TimingCache:
    """Measured kernel seconds on disk, keyed by a context (target, precision, threads) and a
    layer signature + option. A missing or unreadable file is an empty cache; writes are
    atomic (a temporary file renamed), so a killed run leaves the old file."""

    path: Path | None
    entries: dict[str, float] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None) -> TimingCache:
        if path is None:
            return cls(None)
        p = Path(path)
        try:
            raw = json.loads(p.read_text())
            entries = {str(k): float(v) for k, v in raw.get("seconds", {}).items()}
        except (OSError, ValueError, AttributeError):
            entries = {}
        return cls(p, entries)

    @staticmethod
    def key(context: str, signature: Mapping[str, Any], option: Option | None) -> str:
        what = {"context": context, "layer": signature,
                "option": None if option is None else [list(option.block), option.sparsity]}
        return hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> float | None:
        return self.entries.get(key)

    def put(self, key: str, seconds: float) -> None:
        self.entries[key] = float(seconds)

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seconds": self.entries}, indent=0, sort_keys=True))
        tmp.replace(self.path)


@dataclass
class LatencyTable:
    """Measured seconds: every pruned layer built alone, dense and at each option, and two
    whole builds (dense, and every layer at one reference option) that calibrate the
    prediction. A plan's predicted time is ``fixed + scale * (sum of its layers' times)``.

    The two whole builds fit ``fixed`` (what pruning cannot shrink: attention, norms,
    embeddings) and ``scale`` (how a kernel's time in the model compares with its time
    alone: shared caches, fused neighbours); with no reference build, ``scale`` is 1 and
    ``fixed`` the dense build's time minus its layers'.
    """

    dense_model: float
    dense_layers: dict[str, float]
    layers: dict[str, dict[Option, float]]
    reference: dict[str, Option] | None = None
    """each layer's option in the reference build (one block shape and sparsity, clamped to
    each layer's shape)."""
    reference_model: float | None = None

    @functools.cached_property
    def _fit(self) -> tuple[float, float]:
        """``(fixed, scale)``, computed once (the table is not changed after it is made)."""
        dense_sum = sum(self.dense_layers.values())
        plain = (max(self.dense_model - dense_sum, 0.0), 1.0)
        if self.reference is None or self.reference_model is None:
            return plain
        ref_sum = sum(self.layers[n][o] for n, o in self.reference.items())
        if dense_sum - ref_sum <= 1e-12:
            return plain
        scale = (self.dense_model - self.reference_model) / (dense_sum - ref_sum)
        fixed = self.dense_model - scale * dense_sum
        if not (0.25 <= scale <= 4.0) or fixed < 0:  # an implausible fit: noise, keep plain
            return plain
        return fixed, scale

    @property
    def fixed(self) -> float:
        """Seconds of a build spent outside the pruned layers' kernels."""
        return self._fit[0]

    @property
    def scale(self) -> float:
        """A layer's time in the model per second of its time alone."""
        return self._fit[1]

    def time_of(self, name: str, option: Option | None) -> float:
        """Predicted seconds of layer ``name`` in the model (dense when ``option`` is None)."""
        alone = self.dense_layers[name] if option is None else self.layers[name][option]
        return self.scale * alone

    def predict(self, choice: Mapping[str, Option | None]) -> float:
        """Predicted seconds of a build that prunes each layer as ``choice`` says (dense
        where it says ``None`` or does not name the layer)."""
        return self.fixed + sum(self.time_of(n, choice.get(n)) for n in self.dense_layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dense_ms": self.dense_model * 1e3,
            "reference": None if self.reference is None else sorted(
                {o.label() for o in self.reference.values()}),
            "reference_ms": None if self.reference_model is None else self.reference_model * 1e3,
            "fixed_ms": self.fixed * 1e3,
            "scale": self.scale,
            "layers_ms": {n: {"dense": self.dense_layers[n] * 1e3,
                              **{o.label(): t * 1e3 for o, t in sorted(opts.items())}}
                          for n, opts in self.layers.items()},
        }


LayerTimer = Callable[[Any, Sequence[int], "Option | None"], float]


def measure_latency(
    names: Sequence[str],
    modules: Mapping[str, Any],
    input_shapes: Mapping[str, Sequence[int]],
    options: Mapping[str, Sequence[Option]],
    time_layer: LayerTimer,
    time_model: Callable[[Option | None], float],
    *,
    context: str,
    cache: TimingCache,
    reference: Mapping[str, Option] | None = None,
    progress: bool = False,
) -> LatencyTable:
    """Time every layer dense and at each of its ``options`` (``time_layer(module,
    input_shape, option)``; ``None`` = dense), reusing ``cache`` entries for the same
    ``context`` and layer signature, and the whole build dense and (when given) with every
    layer at its ``reference`` option, one block shape and sparsity for all
    (``time_model(option)`` with the first layer's option, not cached: they depend on the
    whole model)."""
    keys: dict[tuple[str, Option | None], str] = {}
    todo: dict[str, tuple[str, Option | None]] = {}  # one measurement per distinct key
    for n in names:
        sig = layer_signature(modules[n], input_shapes[n])
        for option in (None, *options[n]):
            key = TimingCache.key(context, sig, option)
            keys[(n, option)] = key
            if cache.get(key) is None:
                todo.setdefault(key, (n, option))
    it: Iterable[tuple[str, tuple[str, Option | None]]] = todo.items()
    if progress and todo:
        from tqdm.auto import tqdm

        it = tqdm(list(todo.items()), desc="kernel times", unit="kernel", leave=False)
    for i, (key, (name, option)) in enumerate(it):
        cache.put(key, float(time_layer(modules[name], input_shapes[name], option)))
        if i % 16 == 15:  # an interrupted run keeps what it measured
            cache.save()
    times = {job: float(cache.get(key)) for job, key in keys.items()}  # type: ignore[arg-type]
    cache.save()
    ref = dict(reference or {})
    has_reference = bool(names) and all(ref.get(n) in options[n] for n in names)
    return LatencyTable(
        dense_model=float(time_model(None)),
        dense_layers={n: times[(n, None)] for n in names},
        layers={n: {o: times[(n, o)] for o in options[n]} for n in names},
        reference={n: ref[n] for n in names} if has_reference else None,
        reference_model=float(time_model(ref[names[0]])) if has_reference else None,
    )


def _ways(costs: Mapping[str, Mapping[Option, float]]
          ) -> dict[str, list[tuple[Option | None, float]]]:
    """Every layer's choices with their costs: dense (``None``, cost 0) first, then its
    options in order, costs clipped at 0."""
    return {n: [(None, 0.0), *((o, max(c, 0.0)) for o, c in sorted(opts.items()))]
            for n, opts in costs.items()}


def _pick(ways: Mapping[str, Sequence[tuple[Option | None, float]]], table: LatencyTable,
          lam: float) -> dict[str, Option | None]:
    """Each layer's choice minimising ``cost + lam * seconds`` (ties: the faster, then the
    first)."""
    def key(name: str, way: tuple[Option | None, float]) -> tuple[float, float]:
        t = table.time_of(name, way[0])
        return way[1] + lam * t, t

    return {n: min(choices, key=functools.partial(key, n))[0] for n, choices in ways.items()}


def allocate_latency(
    costs: Mapping[str, Mapping[Option, float]], table: LatencyTable, budget: float
) -> dict[str, Option | None]:
    """One option per layer (``None``: dense) whose predicted time meets ``budget`` seconds
    at the least total quality cost. Raises ``ValueError`` when even the fastest options
    miss the budget."""
    ways = _ways(costs)
    if not ways:
        raise ValueError("latency allocation: no layer to prune")
    fastest = {n: min(choices, key=lambda w, n=n: table.time_of(n, w[0]))[0]
               for n, choices in ways.items()}
    if table.predict(fastest) > budget:
        raise ValueError(
            f"latency budget {budget * 1e3:.2f} ms cannot be met: the fastest candidate "
            f"plan is predicted at {table.predict(fastest) * 1e3:.2f} ms (the dense build "
            f"{table.dense_model * 1e3:.2f} ms, {table.fixed * 1e3:.2f} ms of it outside the "
            "pruned layers); allow a larger budget, higher sparsities or other block shapes")
    choice = _pick(ways, table, 0.0)
    if table.predict(choice) > budget:
        lo, hi = 0.0, 1.0
        while table.predict(_pick(ways, table, hi)) > budget:
            hi *= 4.0
            if hi > 1e30:
                break
        for _ in range(100):
            mid = (lo + hi) / 2
            if table.predict(_pick(ways, table, mid)) > budget:
                lo = mid
            else:
                hi = mid
        choice = _pick(ways, table, hi)
        if table.predict(choice) > budget:  # the multiplier search could not reach it
            choice = dict(fastest)
    # spend what is left of the budget: best cost saved per second added, while it fits
    cost_of = {n: dict(choices) for n, choices in ways.items()}
    while True:
        slack = budget - table.predict(choice)
        best: tuple[float, str, Option | None] | None = None
        for n, choices in ways.items():
            now_t, now_c = table.time_of(n, choice[n]), cost_of[n][choice[n]]
            for o, c in choices:
                dt = table.time_of(n, o) - now_t
                if c >= now_c or dt > slack:
                    continue
                gain = (now_c - c) / max(dt, 1e-12)
                if best is None or gain > best[0]:
                    best = (gain, n, o)
        if best is None:
            return choice
        choice[best[1]] = best[2]


@dataclass
class KernelTimer:
    """How latency allocation times kernels on the target: made by the compiler
    (:func:`compiled_timer`), used by :func:`tetris_tvm.oneshot.prepare_recovery`."""

    time_layer: LayerTimer
    time_model: Callable[[Option | None], float]
    input_shapes: Mapping[str, Sequence[int]]
    context: str
    cache: TimingCache


def layer_input_shapes(model: Any, example_inputs: Sequence[Any]) -> dict[str, tuple[int, ...]]:
    """The input shape of every Linear / Conv2d layer (by weight name) when ``model`` runs on
    ``example_inputs``."""
    import torch

    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            wname = f"{name}.weight" if name else "weight"

            def hook(_m: Any, args: tuple[Any, ...], wname: str = wname) -> None:
                if args and isinstance(args[0], torch.Tensor):
                    shapes.setdefault(wname, tuple(int(d) for d in args[0].shape))

            handles.append(module.register_forward_pre_hook(hook))
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(*example_inputs)
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    return shapes


def compiled_timer(
    model: Any,
    example_inputs: Sequence[Any],
    build: Callable[..., Any],
    *,
    context: str,
    options: Mapping[str, Any],
    cache_path: str | os.PathLike[str] | None,
    number: int = 5,
    repeat: int = 5,
) -> KernelTimer:
    """A :class:`KernelTimer` that builds with ``build(module, inputs, sparsity=...,
    block_size=..., **options)`` (the compiler for the target) and times each build with its
    ``benchmark`` (median of ``repeat`` runs of ``number`` calls): a layer alone on a random
    input of its real shape, and the whole ``model`` dense."""
    import torch

    def time_layer(module: Any, shape: Sequence[int], option: Option | None) -> float:
        layer = torch.nn.Sequential(copy.deepcopy(module).float().eval())
        x = torch.randn(*shape)
        with warnings.catch_warnings():  # an unrecovered layer's output change is expected
            warnings.simplefilter("ignore")
            built = build(layer, (x,), sparsity=0.0 if option is None else option.sparsity,
                          block_size=(32, 32) if option is None else option.block, **options)
        return float(built.benchmark(x.numpy(), number=number, repeat=repeat))

    def time_model(option: Option | None) -> float:
        how = ({"sparsity": 0.0} if option is None
               else {"sparsity": option.sparsity, "block_size": option.block})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = build(model, tuple(example_inputs), **how, **options)
        inputs = [x.numpy() if isinstance(x, torch.Tensor) else x for x in example_inputs]
        return float(built.benchmark(*inputs, number=max(number // 2, 1), repeat=repeat))

    return KernelTimer(time_layer, time_model, layer_input_shapes(model, example_inputs),
                       context, TimingCache.open(cache_path))
