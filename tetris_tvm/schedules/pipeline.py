"""The one scheduling entry point: default rules per target and the schedule pipeline.

``compile``, tuning, the kernel build helpers and the tests all schedule through here, so they
all see the same rules in the same order:

- :func:`default_rules` -- the dlight rules for a target, tetris rules first, then the generic
  dense ones (ours for CPU row reductions and elementwise fallbacks, dlight's for the rest);
- :func:`schedule_module` -- rules applied to every PrimFunc, then what the CPU rules mark for
  building expanded (:class:`.cpu.ExpandOperandPrefetch`; a no-op elsewhere);
- :func:`lowering_pipeline` / :func:`schedule_pipeline` -- the Relax passes after
  ``LowerBlockSparse``: legalize and fuse (what tuning sees), then schedule;
- :func:`tuning_space` -- the design spaces a rule offers for a kernel (``tunable=True``),
  which is how tuning learns what to search: it asks the rules, not the target kind.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax, s_tir
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from ..passes.nan_safe import nan_safe_legalizations
from . import cpu, cuda
from .cpu.fallback import Fallback
from .cpu.row_reduction import RowReduction
from .rule import KernelRule, design_spaces_of, matching_rule

__all__ = [
    "default_rules",
    "expand_marks",
    "lowering_pipeline",
    "schedule_module",
    "schedule_pipeline",
    "space_size",
    "tuning_rule",
    "tuning_space",
]


def default_rules(target: Target) -> list[ScheduleRule]:
    """The dlight rules that schedule every kernel for ``target``: ours first, then TVM's."""
    if target.kind.name == "cuda":
        return [*cuda.default_rules(), *cuda.dense_rules()]
    return [*cpu.default_rules(), dl.cpu.GEMV(), RowReduction(), Fallback(), dl.cpu.Reduction()]


def schedule_module(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """Every PrimFunc of ``mod`` not scheduled yet scheduled with :func:`default_rules` (a new
    module), then :func:`expand_marks`."""
    with target:
        mod = dl.ApplyDefaultSchedule(*default_rules(target))(mod)
    return expand_marks(mod)


def expand_marks(mod: tvm.IRModule) -> tvm.IRModule:
    """Expand what the CPU rules mark for building (:class:`.cpu.ExpandOperandPrefetch`), in
    default and tuned schedules alike; the last step before ``tvm.compile``."""
    return cpu.ExpandOperandPrefetch()(mod)


def lowering_pipeline() -> tvm.transform.Pass:
    """The passes after LowerBlockSparse up to unscheduled TensorIR (what tuning sees)."""
    return tvm.transform.Sequential(
        [
            # one computation of what every layer repeats (e.g. a transformer's attention mask)
            relax.transform.EliminateCommonSubexpr(),
            relax.transform.DeadCodeElimination(),
            relax.transform.LegalizeOps(nan_safe_legalizations()),  # NaN as in torch
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
        ]
    )


def schedule_pipeline(target: Target) -> tvm.transform.Pass:
    """The passes after LowerBlockSparse: legalize, fuse, default schedules for ``target``."""
    return tvm.transform.Sequential(
        [
            lowering_pipeline(),
            dl.ApplyDefaultSchedule(*default_rules(target)),
            cpu.ExpandOperandPrefetch(),  # = expand_marks
        ]
    )


def tuning_space(sch: s_tir.Schedule, target: Target) -> list[s_tir.Schedule] | None:
    """The design spaces of the tetris rule that takes ``sch``'s kernel on ``target``, or None
    when no rule offers one (then tuning leaves the kernel to its default schedule, or to
    MetaSchedule's generic space for dense ops)."""
    return design_spaces_of(default_rules(target), sch, target)


def tuning_rule(func: Any, target: Target) -> KernelRule | None:
    """The tetris rule that offers ``func`` a tuning space on ``target`` (None: no rule does),
    found without building the spaces."""
    return matching_rule(default_rules(target), func, target)


def space_size(spaces: list[s_tir.Schedule]) -> int:
    """Distinct candidates in a list of design spaces (each space times the choices of its
    sampled decisions)."""
    total = 0
    for space in spaces:
        n = 1
        for inst in space.trace.insts:
            if inst.kind.name == "SampleCategorical":
                n *= len(inst.attrs[0])
        total += n
    return total
