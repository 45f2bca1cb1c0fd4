"""Timing and quality helpers shared by the CLI (``tetris-tvm bench``) and benchmarks/.

Timing follows design.md: everything compared is run in one process, interleaved (A B C A B C
...), and the median of the repeats is reported, so a noisy machine shifts all candidates alike.

A *sampler* is a zero-argument callable that runs its candidate and returns the seconds one call
took; :func:`median_interleaved` samples them round-robin.  :func:`wall_sampler`,
:func:`torch_sampler`, :func:`tvm_sampler` and :func:`vm_sampler` make them.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "wall_sampler",
    "torch_sampler",
    "tvm_sampler",
    "vm_sampler",
    "time_interleaved",
    "check_and_time",
    "median_interleaved",
    "mean_pool",
    "embedding_quality",
    "accuracy",
    "quality_text",
    "random_block_mask",
    "cpu_name",
]


def median_interleaved(
    samplers: Mapping[str, Callable[[], float]], repeats: int = 7, warmup: int = 1
) -> dict[str, float]:
    """Median of the seconds each sampler reports, sampled round-robin (A B C A B C ...).

    A sampler runs its candidate once and returns how long it took (so a GPU sampler can use
    device events); :func:`time_interleaved` wraps plain callables in a wall clock.
    """
    for _ in range(warmup):
        for sample in samplers.values():
            sample()
    samples: dict[str, list[float]] = {k: [] for k in samplers}
    for _ in range(repeats):
        for name, sample in samplers.items():
            samples[name].append(sample())
    return {k: float(np.median(v)) for k, v in samples.items()}


def wall_sampler(
    fn: Callable[[], Any], number: int = 1, sync: Callable[[], Any] | None = None
) -> Callable[[], float]:
    """A sampler: the wall-clock mean seconds of ``number`` calls of ``fn``.

    ``sync`` (e.g. a TVM device's ``sync`` or ``torch.cuda.synchronize``), when given, is
    called before the clock starts and after the last call, so that asynchronous device work
    is waited for and counted.
    """

    def sample() -> float:
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        if sync is not None:
            sync()
        return (time.perf_counter() - t0) / number

    return sample


def torch_sampler(
    fn: Callable[[], Any], number: int = 1, device: Any = None
) -> Callable[[], float]:
    """A sampler: the mean seconds of ``number`` calls of a torch callable ``fn``.

    On a CUDA ``device`` (a ``torch.device`` or its name) the calls are timed with CUDA events
    recorded on the current stream around them (the host waits for the end event); elsewhere
    (``None``, CPU) by the wall clock, as :func:`wall_sampler`.
    """
    import torch

    if device is None or torch.device(device).type != "cuda":
        return wall_sampler(fn, number)

    def sample() -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / number

    return sample


def tvm_sampler(
    func: Any, args: Sequence[Any], dev: Any, number: int = 1, name: str = "main"
) -> Callable[[], float]:
    """A sampler: the mean seconds per call of ``number`` calls of the compiled function
    ``name`` of the TVM runtime module ``func`` on device ``dev``, as TVM's
    ``time_evaluator`` (one repeat per sample) reports it.

    ``args`` are TVM tensors, or numpy arrays, which are copied to ``dev`` once, here.
    """
    import tvm

    tensors = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) if isinstance(a, np.ndarray)
               else a for a in args]
    evaluator = func.time_evaluator(name, dev, number=number, repeat=1)
    return lambda: float(evaluator(*tensors).mean)


def vm_sampler(
    vm: Any, args: Sequence[Any], dev: Any, number: int = 1, name: str = "main"
) -> Callable[[], float]:
    """A sampler: the wall-clock mean seconds of ``number`` calls of the function ``name`` of
    a Relax virtual machine ``vm`` on the TVM tensors ``args``, with the TVM device ``dev``
    synchronised before the clock starts and after the last call."""
    return wall_sampler(lambda: vm[name](*args), number, dev.sync)


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]], repeats: int = 7, warmup: int = 1
) -> dict[str, float]:
    """Median wall seconds of each zero-argument callable, measured round-robin."""

    def wall(fn: Callable[[], Any]) -> Callable[[], float]:
        def sample() -> float:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

        return sample

    return median_interleaved({k: wall(f) for k, f in fns.items()}, repeats, warmup)


def check_and_time(
    cm: Any, dense_cm: Any, model: Any, reference: Any, inputs: Sequence[Any], repeats: int = 9,
    peers: Mapping[str, Callable[[], Any]] | None = None,
) -> dict[str, Any]:
    """A compiled pruned model against its masked torch ``reference`` and, interleaved in
    this process, against dense torch eager (``model``), our dense build ``dense_cm`` and
    the given dense ``peers`` (name -> runner, :mod:`tetris_tvm.peers`).

    Returns ``max_rel_diff_to_reference``, ``runtime_gathers``, ``weights_kept`` and the
    median milliseconds ``ms_torch_eager``, ``ms_ours_dense``, ``ms_pruned`` and
    ``ms_<peer>`` for each peer.
    """
    import torch

    from .calibration import model_output

    with torch.no_grad():
        expect = model_output(reference(*inputs)).numpy()
    got = cm.run_numpy(*inputs)[0]
    args = [np.ascontiguousarray(x.numpy()) for x in inputs]
    eager = model.eval()

    def torch_eager() -> None:
        with torch.no_grad():
            eager(*inputs)

    fns = {"torch": torch_eager, "dense": lambda: dense_cm.run_numpy(*args),
           "pruned": lambda: cm.run_numpy(*args), **{f"peer:{k}": f for k, f in
                                                    (peers or {}).items()}}
    times = time_interleaved(fns, repeats=repeats)
    totals = cm.report.totals
    return {
        **{f"ms_{k[5:]}": v * 1e3 for k, v in times.items() if k.startswith("peer:")},
        "max_rel_diff_to_reference": float(np.abs(got - expect).max() / np.abs(expect).max()),
        "runtime_gathers": totals["runtime_gathers"],
        "weights_kept": totals["weights_kept_fraction"],
        "ms_torch_eager": times["torch"] * 1e3,
        "ms_ours_dense": times["dense"] * 1e3,
        "ms_pruned": times["pruned"] * 1e3,
        "shape": [list(x.shape) for x in inputs],
    }


def mean_pool(hidden: np.ndarray, input_ids: np.ndarray, pad_id: int = 0) -> np.ndarray:
    """Sentence embeddings: mean of the token states over non-padding tokens, L2-normalised."""
    mask = (input_ids != pad_id).astype(np.float32)[..., None]
    emb = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def embedding_quality(dense: np.ndarray, pruned: np.ndarray) -> dict[str, float]:
    """How much of the dense model's sentence geometry the pruned model keeps.

    ``cosine``: mean cosine between each sentence's dense and pruned embedding.
    ``pair_order``: fraction of sentence-pair comparisons (is pair A more similar than pair
    B?) that the pruned model answers like the dense one.
    """
    cos = float(np.mean(np.sum(dense * pruned, axis=1)))
    sd, sp = dense @ dense.T, pruned @ pruned.T
    iu = np.triu_indices(len(dense), k=1)
    a, b = sd[iu], sp[iu]
    agree = total = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            if a[i] == a[j]:
                continue
            total += 1
            agree += (a[i] > a[j]) == (b[i] > b[j])
    return {"cosine": cos, "pair_order": agree / total if total else 1.0}


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(axis=1) == labels).mean())


def quality_text(model: str, row: Mapping[str, Any]) -> str:
    """One line of quality for a benchmarks/models.py result row."""
    if model == "minilm":
        return f"cosine {row['cosine']:.4f}, pair order {row['pair_order']:.3f}"
    return (
        f"accuracy pruned {row['acc_pruned_no_finetune']:.3f} -> fine-tuned "
        f"{row['acc_compiled_after_finetune']:.3f} (dense {row['acc_dense']:.3f})"
    )


def random_block_mask(
    shape: tuple[int, int], sparsity: float, rng: np.random.Generator
) -> np.ndarray:
    """A block mask keeping exactly ``round((1 - sparsity) * blocks)`` blocks (at least one),
    chosen at random: what the kernel benchmarks prune (they measure kernels, not pruning)."""
    total = shape[0] * shape[1]
    keep = max(1, int(round((1.0 - sparsity) * total)))
    mask = np.zeros(total, bool)
    mask[rng.choice(total, keep, replace=False)] = True
    return mask.reshape(shape)


def cpu_name() -> str:
    """This machine's CPU model as results files record it (``/proc/cpuinfo``'s model name)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
