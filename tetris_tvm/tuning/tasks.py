"""Tuning tasks: the kernels of a lowered model, and valid arguments for measuring them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ArgumentFactory", "KernelTask", "signature", "tasks_from_module"]


# ---------------------------------------------------------------------------------------------
# arguments: valid index arrays for the block-sparse kernels


def signature(args_info: Sequence[Any]) -> str:
    """A key for a kernel's parameter list: dtypes and shapes, as MetaSchedule's runner sees it."""
    rows = []
    for info in args_info:
        obj = info.as_json() if hasattr(info, "as_json") else info
        rows.append([str(obj[1]), [int(d) for d in obj[2]]])
    return json.dumps(rows)


class ArgumentFactory:
    """Inputs for measuring and checking kernels: random floats, VALID index arrays.

    MetaSchedule's default runner fills integer parameters with random values; for a BSR
    kernel those are column indices and row pointers, and a candidate run on them reads out of
    bounds.  Here integer parameters take the real index arrays of the model's weights (looked
    up by the kernel's :func:`signature`) or zeros (valid for any gather).  Instances pickle, so
    MetaSchedule's worker processes (``LocalRunner``) and RPC runner can call them.
    """

    def __init__(self, index_args: Mapping[str, Mapping[int, np.ndarray]], rpc: bool = False):
        self.index_args = {k: dict(v) for k, v in index_args.items()}
        self.rpc = rpc

    def numpy_args(self, args_info: Sequence[Any], seed: int = 0) -> list[np.ndarray]:
        """One set of arguments as numpy arrays."""
        rng = np.random.default_rng(seed)
        fixed = self.index_args.get(signature(args_info), {})
        arrays = []
        for i, info in enumerate(args_info):
            obj = info.as_json() if hasattr(info, "as_json") else info
            dtype, shape = str(obj[1]), [int(d) for d in obj[2]]
            if i in fixed:
                arrays.append(np.asarray(fixed[i]))
            elif dtype.startswith(("float", "bfloat")):
                arrays.append(rng.uniform(-1.0, 1.0, shape).astype(dtype))
            else:
                arrays.append(np.zeros(shape, dtype))
        return arrays

    def __call__(self, *args: Any) -> list[list[Any]]:
        """MetaSchedule's ``f_alloc_argument``: ``(device, args_info, repeat)`` (local runner)
        or ``(session, device, args_info, repeat)`` (RPC runner)."""
        import tvm

        device, args_info, repeat = args[-3:]
        return [
            [tvm.runtime.tensor(a, device) for a in self.numpy_args(args_info, seed)]
            for seed in range(repeat)
        ]


# ---------------------------------------------------------------------------------------------
# tasks


@dataclass
class KernelTask:
    """One kernel to tune: its unscheduled PrimFunc, weight (calls per run) and index args."""

    name: str
    func: Any
    weight: int = 1
    index_args: dict[int, np.ndarray] = field(default_factory=dict)
    num_outputs: int = 1  # the last parameters (destination-passing style)

    @property
    def mod(self) -> Any:
        import tvm

        return tvm.IRModule({"main": self.func})

    @property
    def kind(self) -> str:
        from ..schedules.analysis import kernel_kind

        return kernel_kind(self.func) or "dense-op"

    @property
    def signature(self) -> str:
        from tvm.s_tir import meta_schedule as ms

        return signature(ms.arg_info.ArgInfo.from_prim_func(self.func))


def tasks_from_module(mod: Any, target: Any) -> list[KernelTask]:
    """The tuning tasks of a lowered Relax module (one per distinct PrimFunc).

    Kernels that share a PrimFunc (e.g. the query/key/value projections of a layer, whose
    weights differ only in values) are one task, named after the first of them; the index
    arrays of that kernel's call are the ones measured.
    """
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    call_tir = tvm.ir.Op.get("relax.call_tir")
    index_by_callee: dict[str, dict[int, np.ndarray]] = {}
    outputs_by_callee: dict[str, int] = {}

    def visit(expr: Any) -> None:
        if not (isinstance(expr, relax.Call) and expr.op.same_as(call_tir)):
            return
        fixed = {}
        for i, arg in enumerate(expr.args[1].fields):
            value = getattr(arg, "value", None)
            if isinstance(value, tvm.runtime.Tensor) and value.dtype.startswith(("int", "uint")):
                fixed[i] = value.numpy()
        callee = expr.args[0].name_hint
        index_by_callee.setdefault(callee, fixed)
        out = expr.ty_args[0]
        outputs_by_callee[callee] = len(out.fields) if isinstance(out, relax.TupleType) else 1

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return [
        KernelTask(t.task_name, t.mod["main"], int(t.weight), index_by_callee.get(t.task_name, {}),
                   outputs_by_callee.get(t.task_name, 1))
        for t in ms.relax_integration.extract_tasks(mod, target)
    ]


