"""Every case of the reliability probe (tests/reliability_probe.py) must be judged good: a
correct result, or a clear error in our words for bad input; nothing silent, no crash, no
stale data."""

from __future__ import annotations

import pytest
import reliability_probe as probe

ISOLATED = [c for c in probe.CASES if c.isolate]
IN_PROCESS = [c for c in probe.CASES if not c.isolate]


@pytest.mark.parametrize("case", IN_PROCESS, ids=lambda c: f"{c.area}-{c.name}")
def test_probe_case(case, tmp_path):
    verdict = probe.judge(case, tmp_path)
    assert verdict.verdict == "good", verdict.detail


def test_probe_cases_that_may_crash_the_interpreter(tmp_path):
    """Damaged libraries and many threads, in a process of their own (a crash there fails
    this test, naming the case, instead of ending the test run)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    names = [c.name for c in ISOLATED]
    out = tmp_path / "verdicts.json"
    args = [sys.executable, str(Path(probe.__file__)), "--json", str(out), "--in-process"]
    for name in names:
        args += ["--case", name]
    r = subprocess.run(args, capture_output=True, text=True, timeout=900)
    last = [ln for ln in r.stderr.splitlines() if ln.startswith("running ")][-1:]
    assert r.returncode == 0, f"exit {r.returncode} while {last}: {r.stderr[-2000:]}"
    verdicts = json.loads(out.read_text())
    assert sorted(v["case"] for v in verdicts) == sorted(names)
    bad = [f"{v['case']}: {v['verdict']}: {v['detail']}" for v in verdicts
           if v["verdict"] != "good"]
    assert not bad, "\n".join(bad)
