"""Per-kernel time of a compiled model (VM instrumentation; wall clock around every call)."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

__all__ = ["profile_kernels"]


def profile_kernels(vm: Any, args: list[Any], runs: int = 3) -> list[tuple[str, float, int]]:
    """``[(kernel, seconds per run, calls per run)]`` sorted by time, for ``vm["main"](*args)``."""
    import tvm

    totals: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    started: dict[str, float] = {}

    def instrument(func: Any, symbol: str, before: bool, ret: Any, *rest: Any) -> int:
        if before:
            started[symbol] = time.perf_counter()
        else:
            totals[symbol] += time.perf_counter() - started.pop(symbol, time.perf_counter())
            counts[symbol] += 1
        return 0

    vm["main"](*args)  # warm up
    vm.set_instrument(tvm.runtime.convert(instrument) if hasattr(tvm.runtime, "convert")
                      else instrument)
    try:
        for _ in range(runs):
            vm["main"](*args)
    finally:
        vm.set_instrument(None)
    rows = [(k, totals[k] / runs, counts[k] // runs) for k in totals]
    return sorted(rows, key=lambda r: -r[1])
