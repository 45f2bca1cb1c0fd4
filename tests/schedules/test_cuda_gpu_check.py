"""benchmarks/gpu_check.py in --dry-run mode: builds every kernel, executes nothing."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _dry_run(tmp_path: Path, *extra: str) -> dict:
    rc = _load().main(["--dry-run", "--out", str(tmp_path), *extra])
    assert rc == 0
    return json.loads((tmp_path / "gpu_check.json").read_text())


def test_gpu_check_dry_run_quick(tmp_path):
    data = _dry_run(tmp_path, "--quick")
    cases = data["cases"]
    assert data["meta"]["dry_run"] and len(cases) == 4
    assert all(c["error"] is None and c["t_ours"] is None for c in cases)
    # float16 with >= 32 rows goes to tensor cores, float32 never does
    assert all(c["tensor_core"] == (c["dtype"] == "float16" and c["m"] >= 32) for c in cases)
    # the whole-model check builds the encoder in every precision: half linears in float16,
    # dp4a kernels in int8
    models = {r["dtype"]: r for r in data["whole_model"]}
    assert set(models) == {"float32", "float16", "int8"}
    assert not any("error" in r for r in models.values())
    assert all(k.endswith("_float16") for k in models["float16"]["kernels"])
    assert all(k.startswith("int8_") for k in models["int8"]["kernels"])
    # section 6: a conv in both dtypes and tuning candidates of one fp16 linear, all built
    assert {r["dtype"] for r in data["convs"]} == {"float32", "float16"}
    space = data["tuning_space"]
    assert len(space) == 6 and space[0]["default"] and len({r["config"] for r in space}) == 6
    assert not any("error" in r for r in data["convs"] + space)


@pytest.mark.slow
def test_gpu_check_dry_run_full(tmp_path):
    data = _dry_run(tmp_path)
    assert len(data["cases"]) == 3 * 4 * 2 * 3 * 2
    assert sum(c["tensor_core"] for c in data["cases"]) == 3 * 2 * 2 * 3  # fp16, M >= 256
