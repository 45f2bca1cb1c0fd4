"""tetris_tvm.tune: MetaSchedule runs, checked records, the work directory, RPC."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest
import torch
import torch.nn as nn
from test_compile import assert_close, masked_reference

import tetris_tvm
from tetris_tvm.compiler import lower_model, resolve_target
from tetris_tvm.tuning import (
    ArgumentFactory,
    KernelTask,
    TuningDirectory,
    tasks_from_module,
    tune,
    tune_tasks,
)
from tetris_tvm.tuning.measure import Checker, Device, select_record

SPARSITY, BLOCK = 0.5, (16, 16)


def mlp(d=64, hidden=128):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d), nn.LayerNorm(d)
    ).eval()


def local_checker(task, target):
    """A Checker measuring on this machine with the task's own index arrays."""
    return Checker(task, target, Device(target, None),
                    ArgumentFactory({task.signature: task.index_args}))


@pytest.fixture
def work_copy(tuned, tmp_path):
    """A scratch copy of the tuned work dir and its folder for this machine's target."""
    copy = tmp_path / "work"
    shutil.copytree(tuned[2], copy)
    return copy, TuningDirectory(copy, resolve_target("llvm"))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    model, x = mlp(), torch.randn(8, 64)
    work = tmp_path_factory.mktemp("tuning")
    result = tune(model, (x,), work_dir=work, trials=6, sparsity=SPARSITY, block_size=BLOCK,
                  progress=False)
    return model, x, work, result


def test_every_kernel_is_tuned_and_judged(tuned):
    _, _, work, result = tuned
    kinds = sorted(t.kind for t in result.tasks)
    assert kinds == ["bsr_linear", "dense-op", "ell_linear"]  # two linears + the layer norm
    assert result.trials_this_run == sum(t.trials for t in result.tasks) > 0
    for t in result.tasks:
        assert 0 < t.trials <= 6
        assert t.default_us > 0
        assert t.verdict in ("tuned", "default", "no-correct-record")
        if t.verdict == "tuned":
            assert t.tuned_us < t.default_us
    summary = json.loads((result.path / "summary.json").read_text())
    assert [t["name"] for t in summary["tasks"]] == [t.name for t in result.tasks]
    assert result.path.parent == work and (result.path / "target.json").exists()
    selected = TuningDirectory(work, resolve_target("llvm")).selected_database()
    n_tuned = sum(t.verdict == "tuned" for t in result.tasks)
    assert len(selected.get_all_tuning_records()) == n_tuned


def test_compile_applies_only_checked_records(tuned):
    model, x, work, result = tuned
    cm = tetris_tvm.compile(model, (x,), sparsity=SPARSITY, block_size=BLOCK, tuning=work)
    assert cm.report.totals["tuned_kernels"] == sum(t.verdict == "tuned" for t in result.tasks)
    assert_close(cm(x), masked_reference(model, cm.plan, x))


def test_tuned_build_after_tune_in_the_same_process_is_not_slower(tuned):
    """A build compiled right after tune() in the same process runs like a default build.

    A ratio with a generous margin (a tuned kernel never replaces a faster default, so the
    tuned build should be about as fast or faster); it guards against a process-level
    slowdown (once seen: 40x) rather than timing anything precisely.
    """
    from tetris_tvm.bench import time_interleaved

    model, x, work, _ = tuned
    default = tetris_tvm.compile(model, (x,), sparsity=SPARSITY, block_size=BLOCK)
    tuned_cm = tetris_tvm.compile(model, (x,), sparsity=SPARSITY, block_size=BLOCK, tuning=work)
    xn = x.numpy()
    times = time_interleaved({"default": lambda: default.run_numpy(xn),
                              "tuned": lambda: tuned_cm.run_numpy(xn)}, repeats=51, warmup=5)
    assert times["tuned"] <= 3.0 * times["default"], times


def test_rerun_resumes_instead_of_starting_over(tuned):
    model, x, work, first = tuned
    again = tune(model, (x,), work_dir=work, trials=6, sparsity=SPARSITY, block_size=BLOCK,
                 progress=False)
    assert again.trials_this_run == 0  # every task already has its 6 trials
    assert [t.trials for t in again.tasks] == [t.trials for t in first.tasks]


def test_checker_rejects_a_wrong_kernel():
    import tvm

    from tetris_tvm.kernels import compute as K
    from tetris_tvm.kernels.bsr import BSRMatrix

    rng = np.random.default_rng(0)
    bsr = BSRMatrix.from_dense(rng.standard_normal((48, 64)).astype("f4"), (16, 16),
                               rng.random((3, 4)) < 0.5)
    args = K.linear_weight_args(bsr, np.zeros(48, "f4"), "bsr")
    func = K.block_sparse_linear((5, 64), bsr, bias=True, activation="gelu", fmt="bsr")
    task = KernelTask("k", func, index_args={i + 1: a for i, a in enumerate(args)
                                             if a.dtype.kind == "i"})
    target = resolve_target("llvm")
    checker = local_checker(task, target)
    assert checker.check(checker.build(None))  # the default schedule
    wrong = K.block_sparse_linear((5, 64), bsr, bias=True, activation="relu", fmt="bsr")
    lib = tvm.compile(tvm.IRModule({"main": wrong}), target=target)
    assert not checker.check(checker.device.load(lib, "wrong"))


def test_a_wrong_fastest_record_is_skipped(tuned, monkeypatch, tmp_path):
    """select_record keeps the first record that passes the check, never a failing faster one."""
    model, x, work, _ = tuned
    lowered = lower_model(model, (x,), sparsity=SPARSITY, block_size=BLOCK)
    task = next(t for t in tasks_from_module(lowered.mod, lowered.target)
                if t.kind == "dense-op")
    target = lowered.target
    tdir = TuningDirectory(work, target)
    raw = tdir.raw_database()
    records = raw.get_top_k(raw.commit_workload(task.mod), 8)
    assert len(records) >= 2
    checker = local_checker(task, target)
    real_check, calls = checker.check, []

    def fastest_is_wrong(lib):
        calls.append(lib)
        return real_check(lib) and len(calls) != 2  # call 1 = default, call 2 = fastest record

    monkeypatch.setattr(checker, "check", fastest_is_wrong)
    scratch = TuningDirectory(tmp_path, target).create().selected_database()
    result = select_record(checker, raw, scratch, top_k=8, trials=len(records))
    assert result.rejected == 1
    assert len(calls) == 3  # default, the wrong fastest, the second fastest (kept)
    assert result.tuned_us is not None


def test_corrupt_database_is_an_error_naming_the_file(tuned, work_copy):
    model, x, _, _ = tuned
    copy, tdir = work_copy
    records = tdir.path / "selected_tuning_record.json"
    # a bad line before the last one (a bad last line is taken as half-written and dropped);
    # the kept records may be none when every default won
    records.write_text("this is not json\n" + records.read_text() + "nor is this\n")
    with pytest.raises(ValueError, match="selected_tuning_record.json"):
        tetris_tvm.compile(model, (x,), sparsity=SPARSITY, block_size=BLOCK, tuning=copy)


def test_half_written_last_record_is_dropped(work_copy):
    _, tdir = work_copy
    raw_file = tdir.path / "database_tuning_record.json"
    lines = raw_file.read_text().splitlines()
    raw_file.write_text("\n".join(lines) + "\n" + lines[-1][: len(lines[-1]) // 2])
    with pytest.warns(UserWarning, match="half-written"):
        raw = tdir.raw_database()
    assert len(raw.get_all_tuning_records()) == len(lines)


def test_database_of_another_target_is_never_applied(tuned):
    model, x, work, _ = tuned
    other = {"kind": "llvm", "mcpu": "cortex-a72", "mtriple": "aarch64-linux-gnu",
             "num-cores": 4}
    with pytest.raises(ValueError, match="no tuning results for target"):
        tetris_tvm.compile(model, (x,), target=other, sparsity=SPARSITY, block_size=BLOCK,
                           tuning=work)
    with pytest.warns(UserWarning, match="default schedules"):
        cm = tetris_tvm.compile(model, (x,), target=other, sparsity=SPARSITY,
                                block_size=BLOCK, tuning=work, tuning_fallback=True)
    assert cm.report.totals["tuned_kernels"] == 0


def test_database_of_another_model_is_an_error(tuned):
    _, _, work, _ = tuned
    other, x = mlp(d=32, hidden=48), torch.randn(8, 32)
    with pytest.raises(ValueError, match="tuned for other kernels"):
        tetris_tvm.compile(other, (x,), sparsity=SPARSITY, block_size=BLOCK, tuning=work)
    with pytest.raises(ValueError, match="does not exist"):
        tetris_tvm.compile(other, (x,), sparsity=SPARSITY, block_size=BLOCK,
                           tuning=work / "missing")


def test_bad_arguments():
    model, x = mlp(), torch.randn(2, 64)
    with pytest.raises(ValueError, match="trials"):
        tune(model, (x,), work_dir="unused", trials=-1, progress=False)
    with pytest.raises(ValueError, match="host:port/key"):
        tune(model, (x,), work_dir="unused", rpc="nonsense", progress=False)


def test_tuning_through_rpc_tracker_and_server(tmp_path):
    """Measure on a device behind an RPC tracker (here: a server on loopback)."""
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    model, x = mlp(d=32, hidden=64), torch.randn(4, 32)
    lowered = lower_model(model, (x,), sparsity=SPARSITY, block_size=BLOCK)
    task = next(t for t in tasks_from_module(lowered.mod, lowered.target)
                if t.kind.endswith("_linear"))
    tracker = Tracker(host="127.0.0.1", port=19190, port_end=19290, silent=True)
    server = rpc.Server(host="127.0.0.1", port=19300, port_end=19400, key="tetris-test",
                        tracker_addr=("127.0.0.1", tracker.port), silent=True)
    try:
        time.sleep(1.0)
        result = tune_tasks([task], lowered.target, tmp_path, trials=4,
                            rpc=f"127.0.0.1:{tracker.port}/tetris-test", progress=False)
    finally:
        server.terminate()
        tracker.terminate()
    (only,) = result.tasks
    assert 0 < only.trials <= 4 and only.default_us > 0
    assert only.verdict in ("tuned", "default")


def _tuning_run(tmp_path, new_session: bool = False):
    """A tuning run of the test MLP in a child process, once it has measured records.

    Returns the process and the list its output lines are read into (from the start: a full
    pipe would block the child).
    """
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_tuning import mlp
        from tetris_tvm import tune
        tune(mlp(), (torch.randn(8, 64),), work_dir={str(tmp_path / "work")!r}, trials=400,
             sparsity={SPARSITY}, block_size={BLOCK}, progress=False)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=new_session)
    lines: list[str] = []
    threading.Thread(target=lambda: [lines.append(x) for x in proc.stdout], daemon=True).start()
    records = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "work").glob("*/database_tuning_record.json"))
        if found and found[0].stat().st_size > 0:
            records = found[0]
            break
        time.sleep(0.5)
    assert records is not None, "".join(lines)[-2000:]
    time.sleep(3.0)
    return proc, lines


def _interrupt_until_acknowledged(proc, lines, interrupt) -> None:
    """Ctrl-C, acknowledged at once even while MetaSchedule's search is in C++.

    (Python's own signal handler ran only minutes later there.)  A Ctrl-C that lands while
    LLVM code in the process has its own SIGINT handler installed is lost (measured: 5 of
    120 signals sent during a run), as it would be for a user, who presses again: so does
    the test.
    """
    for _ in range(4):
        interrupt()
        if _wait_for(lambda: any("stopping before the next batch" in x for x in lines), 15):
            return
    raise AssertionError(_signal_state(proc.pid) + "".join(lines)[-2000:])


def _stopped(proc, lines, interrupt) -> str:
    """Wait for the run to end after an acknowledged Ctrl-C; returns its output.

    The run ends at the next Python callback; that can take minutes on a loaded 2-core
    machine, and a second Ctrl-C then ends the process at once.
    """
    try:
        proc.wait(timeout=120)
        graceful = True
    except subprocess.TimeoutExpired:
        interrupt()
        proc.wait(timeout=30)
        graceful = False
    time.sleep(0.5)
    out = "".join(lines)
    assert proc.returncode != 0
    assert ("interrupted" if graceful else "aborted") in out, out[-2000:]
    return out


@pytest.mark.slow
def test_ctrl_c_keeps_measured_records_and_a_rerun_resumes(tmp_path):
    proc, lines = _tuning_run(tmp_path)
    interrupt = lambda: proc.send_signal(signal.SIGINT)  # noqa: E731
    _interrupt_until_acknowledged(proc, lines, interrupt)
    _stopped(proc, lines, interrupt)
    tdir = TuningDirectory(tmp_path / "work", resolve_target("llvm"))
    kept = len(tdir.raw_database().get_all_tuning_records())
    assert kept > 0
    # the rerun counts what was kept: asking for no more than that measures nothing new
    model, x = mlp(), torch.randn(8, 64)
    lowered = lower_model(model, (x,), sparsity=SPARSITY, block_size=BLOCK)
    tasks = tasks_from_module(lowered.mod, lowered.target)
    least = min(_count(tdir, t) for t in tasks)
    if least:
        again = tune_tasks(tasks, lowered.target, tmp_path / "work", trials=least,
                           progress=False)
        assert again.trials_this_run == 0
    assert np.isfinite(kept)


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_stops_the_run_and_its_workers(tmp_path):
    """A terminal sends Ctrl-C to the whole process group: the build and run workers too."""
    proc, lines = _tuning_run(tmp_path, new_session=True)
    interrupt = lambda: os.killpg(proc.pid, signal.SIGINT)  # noqa: E731
    _interrupt_until_acknowledged(proc, lines, interrupt)
    _stopped(proc, lines, interrupt)
    tdir = TuningDirectory(tmp_path / "work", resolve_target("llvm"))
    assert len(tdir.raw_database().get_all_tuning_records()) > 0
    time.sleep(1.0)
    assert not _session_members(proc.pid), "workers outlived the run"


def _session_members(sid: int) -> list[int]:
    """Live processes of session ``sid``."""
    members = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == sid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                members.append(pid)
        except (OSError, psutil.Error):
            continue
    return members


def test_ctrl_c_is_seen_by_the_watcher_and_twice_aborts(tmp_path):
    """The watcher thread, not Python's handler (a no-op while active), acts on Ctrl-C.

    (The tuning runs above cover a main thread that stays in MetaSchedule's C++ code.)"""
    script = tmp_path / "stop.py"
    script.write_text(textwrap.dedent("""
        import os, signal, time
        from tetris_tvm.tuning.interrupt import StopOnCtrlC
        with StopOnCtrlC("WORKDIR") as stop:
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.time() + 20
            while not stop.requested and time.time() < deadline:
                time.sleep(0.05)
            print("requested", stop.requested, flush=True)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(20)
        print("not aborted", flush=True)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert "requested True" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 130 and "not aborted" not in proc.stdout
    assert "aborted; the records measured so far are kept in WORKDIR" in proc.stdout


def _signal_state(pid: int) -> str:
    """What a failed Ctrl-C test needs to know about the child: its signal masks and stacks."""
    out = []
    try:
        status = open(f"/proc/{pid}/status").read().splitlines()
        out += [x for x in status if x.startswith(("State", "Sig", "ShdPnd", "Threads"))]
        for task in sorted(os.listdir(f"/proc/{pid}/task")):
            blk = [x for x in open(f"/proc/{pid}/task/{task}/status").read().splitlines()
                   if x.startswith(("SigBlk", "SigPnd"))]
            out.append(f"task {task}: {' '.join(blk)}")
    except OSError as e:
        out.append(f"(no /proc state: {e})")
    if shutil.which("py-spy"):
        dump = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True,
                              text=True, timeout=60)
        out.append(dump.stdout[-6000:])
    return "\n".join(out) + "\n"


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _count(tdir, task):
    raw = tdir.raw_database()
    wl = raw.commit_workload(task.mod)
    return len(raw.get_top_k(wl, 10**6))


def test_cross_export_links_candidates_for_another_architecture(tmp_path):
    """Candidates for an aarch64 board (tuned over RPC) are linked here, pickled workers too."""
    import pickle
    import shutil

    import tvm

    from tetris_tvm.kernels import compute as K
    from tetris_tvm.kernels.bsr import BSRMatrix
    from tetris_tvm.tuning import CrossExport

    cc = shutil.which("aarch64-linux-gnu-g++") or shutil.which("aarch64-linux-gnu-gcc")
    if cc is None:
        pytest.skip("no aarch64 cross compiler (apt-get install g++-aarch64-linux-gnu)")
    bsr = BSRMatrix.from_dense(np.ones((32, 32), "f4"), (16, 16), np.ones((2, 2), bool))
    func = K.block_sparse_linear((4, 32), bsr)
    target = resolve_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "num-cores": 4})
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    export = pickle.loads(pickle.dumps(CrossExport(cc, str(tmp_path))))
    header = open(export(lib.mod, "k"), "rb").read(20)
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183
