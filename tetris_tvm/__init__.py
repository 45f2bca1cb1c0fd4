"""tetris-tvm: TETRIS reorder-and-block-prune as a TVM compiler pass.

Public API (see design.md):

- :func:`prune_weight` -- reorder + block-prune one numpy weight, returns a :class:`LayerPlan`.
- :func:`prune` -- a :class:`PruningPlan` for every eligible layer of a torch model, with
  optional calibration-aware importance, reconstruction and per-layer sparsity allocation.
- :func:`plan_model` -- the plan :func:`compile` would compute (permutations that fold away).
- :func:`finetune` -- gradual TETRIS pruning with distillation from the dense model;
  :func:`graph_planner` makes it plan the way :func:`compile` does.
- :class:`GradualPruner` -- the same gradual pruning inside your own training loop (or a
  Hugging Face ``Trainer`` through ``pruner.trainer_callback()``).
- :class:`PruningSpec` -- what to prune and how (sparsity, blocks, overrides, recovery,
  precision), taken by every entry point as ``spec=``.
- :func:`compile` / :func:`load` -- build a block-sparse TVM module (and load an exported one);
  ``compile`` is :func:`lower` (prune, fold, lower to kernels) then :func:`build`.
- :func:`tune` -- MetaSchedule-tune every kernel of a model (or of a :func:`lower` result);
  ``build(lowered, tuning=work_dir)`` / ``compile(..., tuning=work_dir)`` use the records.

Nothing heavy (TVM, torch) is imported until a name that needs it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "prune_weight": "tetris_tvm.reorder",
    "LayerPlan": "tetris_tvm.reorder",
    "prune": "tetris_tvm.oneshot",
    "PruningPlan": "tetris_tvm.plan",
    "SkippedLayer": "tetris_tvm.plan",
    "PruningSpec": "tetris_tvm.spec",
    "compile": "tetris_tvm.compiler",
    "lower": "tetris_tvm.compiler",
    "build": "tetris_tvm.compiler",
    "plan_model": "tetris_tvm.compiler",
    "graph_planner": "tetris_tvm.compiler",
    "finetune": "tetris_tvm.finetuning",
    "GradualPruner": "tetris_tvm.gradual",
    "load": "tetris_tvm.compiler",
    "CompiledModel": "tetris_tvm.compiler",
    "tune": "tetris_tvm.tuning",
}

__all__ = ["__version__", *_LAZY]


# submodules reachable as attributes (``tetris_tvm.quality.text_split()``)
_SUBMODULES = ("quality", "zoo", "calibration", "importance", "reconstruct", "allocation")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"tetris_tvm.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tetris_tvm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
