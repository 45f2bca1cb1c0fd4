"""Targets: what ``"llvm"`` and ``"cuda"`` mean, and the attributes the rules read.

``"llvm"`` is this host (its CPU and core count, which MetaSchedule and the CPU rules need);
``"cuda"`` is an sm_90 GPU with the limits dlight and MetaSchedule read (TVM 0.27 fills none of
them for a bare ``{"kind": "cuda", "arch": ...}``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tvm.target import Target

__all__ = ["cuda_target_dict", "default_target", "resolve_target"]


def default_target(num_cores: int | None = None) -> Target:
    """An llvm target for this machine's CPU (``num-cores`` from ``TVM_NUM_THREADS`` or cores)."""
    from tvm.target import codegen

    if num_cores is None:
        num_cores = int(os.environ.get("TVM_NUM_THREADS", "0")) or os.cpu_count() or 1
    return Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": num_cores})


def resolve_target(target: Any) -> Any:
    """A ``tvm.target.Target`` from ``"llvm"``, ``"cuda"``, a JSON dict or a Target.

    ``"llvm"`` is this host (its CPU and core count, which MetaSchedule needs); ``"cuda"`` is an
    sm_90 GPU with the attributes dlight and MetaSchedule read.
    """
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        if target == "llvm":
            return default_target()
        if target == "cuda":
            return Target(cuda_target_dict())
        raise ValueError(
            f"unknown target {target!r}: use 'llvm', 'cuda' or a JSON dict such as "
            '{"kind": "llvm", "mcpu": "znver3", "num-cores": 2}'
        )
    if isinstance(target, Mapping):
        spec = dict(target)
        if spec.get("kind") == "llvm" and "num-cores" not in spec:
            spec["num-cores"] = len(os.sched_getaffinity(0))
        if spec.get("kind") == "cuda":
            spec = {**cuda_target_dict(str(spec.get("arch", "sm_90"))), **spec}
        return Target(spec)
    raise ValueError(f"target must be a string, dict or tvm Target, got {type(target)}")


def cuda_target_dict(arch: str = "sm_90") -> dict[str, Any]:
    """A CUDA target with the limits dlight / MetaSchedule need (H100/H200-class defaults)."""
    return {
        "kind": "cuda",
        "arch": arch,
        "max_threads_per_block": 1024,
        "max_shared_memory_per_block": 49152,
        "thread_warp_size": 32,
        "registers_per_block": 65536,
    }
