"""``tetris_tvm.tune``: MetaSchedule tuning of every kernel of a compiled model.

One run tunes the block-sparse kernels (the design spaces the schedule rules offer,
:func:`tetris_tvm.schedules.pipeline.tuning_space`) and the dense ones (MetaSchedule's generic
rules) under one trial budget with the XGBoost cost model. Afterwards each task's fastest
records are checked against the unscheduled kernel on random valid inputs, and the first
correct one is kept only if it beats the default schedule, timed in the same process.
``compile(..., tuning=work_dir)`` applies only those kept records
(:mod:`tetris_tvm.schedules.database` has the work directory's layout).

- :mod:`.tasks` -- the kernels of a lowered model and valid arguments for them;
- :mod:`.measure` -- where candidates run, the numerical check, the choice of records;
- :mod:`.interrupt` -- Ctrl-C between batches;
- :mod:`.search` -- :func:`tune` / :func:`tune_tasks`.
"""

from ..schedules.database import TuningDirectory, apply_tuning
from .measure import CrossExport, TaskResult, TuningResult
from .search import tune, tune_tasks
from .tasks import ArgumentFactory, KernelTask, tasks_from_module

__all__ = [
    "ArgumentFactory",
    "CrossExport",
    "KernelTask",
    "TaskResult",
    "TuningDirectory",
    "TuningResult",
    "apply_tuning",
    "tasks_from_module",
    "tune",
    "tune_tasks",
]
