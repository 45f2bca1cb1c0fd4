"""Tuning records on disk, and applying them: one work directory, one folder per target.

The layout (one subfolder per target, so a CPU database never reaches a CUDA build)::

    work_dir/
      <target-key>/
        target.json                     the target the records were measured on
        database_workload.json          every workload measured (MetaSchedule JSON database,
        database_tuning_record.json     appended as measured: an interrupted run keeps them)
        selected_workload.json          the checked records that beat the defaults:
        selected_tuning_record.json     what compile() applies
        summary.json                    per task: trials, default / tuned latency, verdict
        logs/                           MetaSchedule's own logs

``compile(..., tuning=work_dir)`` applies the selected records (:func:`apply_tuning`);
:mod:`tetris_tvm.tuning` writes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

__all__ = ["TuningDirectory", "apply_tuning", "drop_truncated_tail", "target_key", "target_spec"]


# ---------------------------------------------------------------------------------------------
# the work directory


def target_spec(target: Any) -> dict[str, Any]:
    """``target`` as a plain JSON-able dict."""

    def plain(v: Any) -> Any:
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        if hasattr(v, "items"):
            return {str(k): plain(x) for k, x in v.items()}
        if hasattr(v, "__iter__"):
            return [plain(x) for x in v]
        return str(v)

    return plain(target.export())


def target_key(target: Any) -> str:
    """Folder name for ``target``'s records: kind, CPU / arch, and a hash of the whole target."""
    spec = target_spec(target)
    text = json.dumps(spec, sort_keys=True, default=str)
    detail = str(spec.get("mcpu") or spec.get("arch") or spec.get("mtriple") or "generic")
    slug = re.sub(r"[^A-Za-z0-9_.]+", "-", f"{target.kind.name}-{detail}")
    return f"{slug}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"


class TuningDirectory:
    """One target's records inside a tuning work directory (layout in the module docstring)."""

    RAW = ("database_workload.json", "database_tuning_record.json")
    SELECTED = ("selected_workload.json", "selected_tuning_record.json")

    def __init__(self, work_dir: str | os.PathLike[str], target: Any):
        self.work_dir = Path(work_dir)
        self.target = target
        self.path = self.work_dir / target_key(target)

    def create(self) -> TuningDirectory:
        self.path.mkdir(parents=True, exist_ok=True)
        target_file = self.path / "target.json"
        if not target_file.exists():
            target_file.write_text(json.dumps(target_spec(self.target), indent=1))
        return self

    def targets(self) -> list[str]:
        """The targets this work directory has records for (as written in target.json)."""
        found = []
        for tf in sorted(self.work_dir.glob("*/target.json")):
            try:
                spec = json.loads(tf.read_text())
                detail = spec.get("mcpu") or spec.get("arch") or ""
                found.append(f"{tf.parent.name}: {spec.get('kind')} {detail}".strip())
            except (OSError, ValueError):
                found.append(f"{tf.parent.name}: (unreadable target.json)")
        return found

    def _database(self, names: tuple[str, str], allow_missing: bool) -> Any:
        from tvm.s_tir import meta_schedule as ms

        paths = [self.path / n for n in names]
        for p in paths:
            if p.exists():
                drop_truncated_tail(p)
        try:
            return ms.database.JSONDatabase(
                path_workload=str(paths[0]), path_tuning_record=str(paths[1]),
                allow_missing=allow_missing,
            )
        except Exception as err:  # noqa: BLE001 - TVM raises several types for a bad file
            raise ValueError(
                f"corrupt tuning database {paths[0]} / {paths[1]}: {err}. Delete the folder "
                f"{self.path} to tune again from scratch."
            ) from None

    def raw_database(self) -> Any:
        """Every record measured so far (created empty when missing)."""
        return self._database(self.RAW, allow_missing=True)

    def selected_database(self, fresh: bool = False) -> Any:
        """The checked records compile() applies; ``fresh`` starts it empty."""
        if fresh:
            for n in self.SELECTED:
                (self.path / n).unlink(missing_ok=True)
        return self._database(self.SELECTED, allow_missing=True)

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def read_summary(self) -> dict[str, Any]:
        try:
            return json.loads(self.summary_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as err:
            raise ValueError(f"corrupt tuning summary {self.summary_path}: {err}") from None


def drop_truncated_tail(path: Path) -> None:
    """Repair a JSON-lines database whose last line an interrupted run left half-written.

    Any other unparsable line is corruption and raises ``ValueError`` naming the file.
    """
    lines = path.read_text().splitlines()
    bad = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError:
            bad.append(i)
    if not bad:
        return
    if bad == [len(lines) - 1]:
        warnings.warn(f"{path}: dropped a half-written last record (interrupted run)",
                      stacklevel=3)
        path.write_text("".join(line + "\n" for line in lines[:-1]))
        return
    raise ValueError(
        f"corrupt tuning database {path}: line {bad[0] + 1} is not a JSON record"
    )


# ---------------------------------------------------------------------------------------------
# applying


def apply_tuning(
    mod: Any, target: Any, work_dir: str | os.PathLike[str], fallback: bool = False
) -> tuple[Any, int]:
    """Schedule the kernels of ``mod`` that ``work_dir`` has checked records for.

    Returns the module and how many kernels took a tuned schedule.  A work directory without
    records for ``target``, or whose tasks are none of this model's kernels, is a ValueError
    (with ``fallback=True``: a warning, and the default schedules are used).
    """
    import tvm_ffi
    from tvm import relax, tirx

    tdir = TuningDirectory(work_dir, target)

    def refuse(message: str) -> tuple[Any, int]:
        if fallback:
            warnings.warn(message + "; using the default schedules", stacklevel=3)
            return mod, 0
        raise ValueError(message + " (pass tuning_fallback=True to compile anyway)")

    if not Path(work_dir).is_dir():
        return refuse(f"tuning work directory {work_dir} does not exist")
    if not tdir.summary_path.exists():
        have = tdir.targets()
        return refuse(
            f"{work_dir} has no tuning results for target {json.dumps(target_spec(target))}"
            + (f"; it has: {'; '.join(have)}" if have else "")
        )
    tdir.read_summary()  # a clear error if it is corrupt
    kernels = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}

    def apply(database: Any) -> tuple[Any, int]:
        with target, database:
            out = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        changed = sum(1 for n, f in kernels.items() if not tvm_ffi.structural_equal(out[n], f))
        return out, changed

    # every measured workload (checked or not) tells whether this model was tuned here at all
    _, covered = apply(tdir.raw_database())
    if covered == 0:
        return refuse(
            f"{tdir.path} was tuned for other kernels than this model's; tune this model "
            "(same sparsity / block size / plan) first"
        )
    out, tuned = apply(tdir.selected_database())
    return out, tuned
