"""Quality recovered by fine-tuning with distillation, and the speed of the same model.

For each model, sparsity and block size: gradual pruning with distillation from the dense
model (``tetris_tvm.finetune``: cubic ramp, sensitivity allocation, re-planned with the
compiler's folding constraints; optionally intermediate-layer distillation), the held-out
metrics every sixth of the steps (the curve), the wall time of training on this machine,
and the compiled fine-tuned model's latency against dense torch eager and our dense build
(interleaved, median). Element-wise pruning fine-tuned with the same budget is the anchor.

Training data is the training side of the fixed splits only (MiniLM: Lee background and
Python-docs sentences; the rows in benchmarks/results/finetune.json were trained with the
chatterbot utterances too, which are now an out-of-domain held-out set; MNIST: the 4000
training images); every metric is on the held-out side. Rows already in the JSON file are
kept (the run resumes).

    python benchmarks/finetune.py --only mnist-cnn
    python benchmarks/finetune.py --only minilm --steps 1500 --configs 0.5:32 0.75:32
    python benchmarks/finetune.py --only minilm --steps 2400 --hidden-layers auto \
        --methods tetris --configs 0.5:32
    python benchmarks/finetune.py --retime --peers   # saved fine-tuned plans, current compiler
    python benchmarks/finetune.py --only minilm --steps 1200 --methods tetris \
        --configs 0.5:32x4 --int8                    # a rectangular block, and its int8 build

Blocks are ``rows`` (square) or ``rowsxcols`` (outputs x inputs). ``--int8`` (MiniLM) also
compiles each fine-tuned TETRIS plan with ``quantize="int8"``, measures that build's held-out
quality (its reference: the fine-tuned masked model with the build's fake quantization) and
times it interleaved with our dense int8 build and OpenVINO's float32 and int8 (NNCF, on the
calibration sentences) models (``int8`` in the row).

``--retime`` trains nothing: every TETRIS row whose fine-tuned plan is still saved is compiled
again with the current compiler, checked against its masked reference, its held-out metrics
recomputed from the plan (they must match the row's), and timed again; the row's times are
replaced (``retimed`` marks it).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import peers, quality, zoo  # noqa: E402
from tetris_tvm.bench import check_and_time  # noqa: E402

DEFAULTS = {
    "minilm": {"configs": ["0.5:32", "0.75:32"], "steps": 1200, "lr": 3e-4, "batch": 32},
    "mnist-cnn": {"configs": ["0.75:8", "0.9:8"], "steps": 800, "lr": 5e-4, "batch": 64},
}


class Task:
    def __init__(self, name: str, batch: int) -> None:
        self.name = name
        if name == "minilm":
            self.model, tok = zoo.load_minilm()
            self.data = quality.minilm_training_batches(tok, batch=batch)
            self.calibration = quality.minilm_calibration(tok, n=256)
            ev = quality.EncoderEvaluator(self.model, tok)
            self.evaluate = ev.evaluate
            self.dense = dict(ev.dense)
            self.example = (zoo.minilm_inputs(tok, 8, 128),)
            self.overrides: dict[str, Any] = {"pooler.*": {"skip": True}}
        else:
            self.model = zoo.load_mnist_cnn()
            self.data = quality.mnist_training_batches(batch=batch)
            self.calibration = quality.mnist_calibration(n=1000)
            _, (hx, hy) = quality.mnist_split()
            self.evaluate = lambda m: {"accuracy": quality.classifier_accuracy(m, hx, hy)}
            self.dense = self.evaluate(self.model)
            self.example = (torch.from_numpy(hx[:100]),)
            self.overrides = {}


def block_of(text: str) -> tuple[int, int]:
    """``"32"`` -> (32, 32); ``"32x4"`` -> (32, 4)."""
    rows, _, cols = text.partition("x")
    return int(rows), int(cols or rows)


def block_name(block: tuple[int, int]) -> int | str:
    """What a row records: the side of a square block (as rows always did), else "RxC"."""
    return block[0] if block[0] == block[1] else f"{block[0]}x{block[1]}"


def int8_row(task: Task, plan: Any, repeats: int, baselines: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuned plan compiled in int8: its held-out quality and its time next to the
    dense ``baselines`` (:func:`int8_baselines`; interleaved, median)."""
    import numpy as np

    from tetris_tvm.bench import median_interleaved, wall_sampler
    from tetris_tvm.quantization import quantized_reference

    (ids,) = task.example
    cm = tetris_tvm.compile(task.model, task.example, plan=plan, quantize="int8", progress=False)
    metrics = task.evaluate(quantized_reference(task.model, cm.plan))
    arrays = [np.ascontiguousarray(ids.numpy())]
    mask = np.ones_like(arrays[0])
    dense = baselines["ours_dense_int8"]
    samplers = {"pruned_int8": wall_sampler(lambda: cm.run_numpy(*arrays)),
                "ours_dense_int8": wall_sampler(lambda: dense.run_numpy(*arrays)),
                **{k: wall_sampler(p.timer(arrays[0], mask)) for k, p in baselines.items()
                   if k != "ours_dense_int8"}}
    times = median_interleaved(samplers, repeats=repeats)
    return {**{k: float(v) for k, v in metrics.items()},
            **{f"ms_{k}": t * 1e3 for k, t in times.items()}}


def int8_baselines(task: Task) -> dict[str, Any]:
    """What ``--int8`` times a fine-tuned int8 build against, built once per model: our dense
    int8 build, OpenVINO float32 and int8 (NNCF on the calibration sentences)."""
    (ids,) = task.example
    data = [(b["input_ids"], b["attention_mask"]) for b in task.calibration]
    out: dict[str, Any] = {
        "ours_dense_int8": tetris_tvm.compile(task.model, task.example, sparsity=0.0,
                                              quantize="int8", overrides=task.overrides,
                                              progress=False)}
    for v in ("openvino", "openvino-int8"):
        out[v] = peers.build(v, task.model, (ids, torch.ones_like(ids)), 2,
                             calibration=data if v.endswith("int8") else None)
    return out


def run(task: Task, s: float, b: tuple[int, int], method: str, steps: int, lr: float,
        eval_every: int, dense_cm: Any, repeats: int, hidden: str | None, allocation: str,
        peer_runners: dict[str, Any], plan_dir: Path,
        int8: dict[str, Any] | None = None, reuse: bool = False) -> dict[str, Any]:
    plan_path = plan_dir / f"{task.name}_s{s}_b{block_name(b)}_{steps}steps.npz"
    if reuse and method == "tetris" and plan_path.is_file():
        plan, seconds = _saved_plan(plan_path, steps, lr, hidden, allocation), None
    else:
        planner = None
        if method == "tetris":
            planner = tetris_tvm.graph_planner(task.model, task.example, b,
                                               overrides=task.overrides)
        t0 = time.perf_counter()
        _, plan = tetris_tvm.finetune(
            copy.deepcopy(task.model), task.data, s, b, steps=steps, lr=lr,
            prune_every=max(steps // 30, 1), allocation=allocation, method=method,
            overrides=task.overrides, planner=planner, calibration=task.calibration,
            evaluate=task.evaluate, eval_every=eval_every, progress=False,
            hidden_layers=hidden,
        )
        seconds = time.perf_counter() - t0
    hist = plan.settings["finetune"]["history"]
    row: dict[str, Any] = {"seconds": seconds, "steps": steps, "lr": lr, "history": hist,
                           "hidden_layers": hidden, "allocation": allocation,
                           **{k: v for k, v in hist[-1].items() if k not in ("step",)}}
    if method != "tetris":
        return row  # unstructured: no block-sparse kernels to time
    plan_dir.mkdir(parents=True, exist_ok=True)
    if seconds is not None:
        plan.save(plan_path)  # the fine-tuned model: masks and weights (not committed: large)
    row["plan_file"] = str(plan_path)
    cm = tetris_tvm.compile(task.model, task.example, plan=plan)
    plan.remove()
    reference = plan.apply(copy.deepcopy(task.model), keep=False)
    row.update(check_and_time(cm, dense_cm, task.model, reference, task.example, repeats,
                              peers=peer_runners))
    if int8 is not None:
        row["int8"] = int8_row(task, plan, repeats, int8)
    return row


def _saved_plan(path: Path, steps: int, lr: float, hidden: str | None,
                allocation: str) -> Any:
    """A fine-tuned plan saved by an earlier run of this configuration (``--reuse-plans``),
    checked to be that recipe's."""
    from tetris_tvm.plan import PruningPlan

    plan = PruningPlan.load(path)
    ft = plan.settings.get("finetune", {})
    want = {"steps": steps, "lr": lr, "allocation": allocation,
            "hidden_layers": [] if hidden is None else ft.get("hidden_layers")}
    got = {k: ft.get(k) for k in want}
    if got != want:
        raise RuntimeError(f"{path} was fine-tuned with {got}, not {want}")
    print(f"reusing the fine-tuned plan {path} (its training time is not known)", flush=True)
    return plan


def retime(task: Task, row: dict[str, Any], dense_cm: Any, repeats: int,
           peer_runners: dict[str, Any]) -> None:
    """Compile, check and time a saved fine-tuned plan again; updates ``row`` in place."""
    from tetris_tvm.plan import PruningPlan

    plan = PruningPlan.load(row["plan_file"])
    reference = plan.apply(copy.deepcopy(task.model), keep=False)
    metrics = task.evaluate(reference)
    for k, v in metrics.items():
        if k in row and abs(float(v) - float(row[k])) > 1e-3:
            raise RuntimeError(f"{row['plan_file']}: {k} is {v:.4f}, the row says "
                               f"{row[k]:.4f}: not the fine-tuned model of this row")
    cm = tetris_tvm.compile(task.model, task.example, plan=plan)
    row.update(check_and_time(cm, dense_cm, task.model, reference, task.example, repeats,
                              peers=peer_runners))
    row["retimed"] = True


def _key(r: dict[str, Any]) -> tuple:
    """What makes a row: model, sparsity, block, method and the recipe."""
    return (r["model"], r["sparsity"], r["block"], r["method"], r["steps"],
            r.get("hidden_layers"), r.get("allocation", "sensitivity"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/finetune.json"))
    ap.add_argument("--only", nargs="*", default=None, help="minilm and/or mnist-cnn")
    ap.add_argument("--configs", nargs="*", default=None,
                    help="sparsity:block, e.g. 0.5:32 or 0.5:32x4 (outputs x inputs)")
    ap.add_argument("--methods", nargs="*", default=["tetris", "element"])
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate")
    ap.add_argument("--repeats", type=int, default=9, help="interleaved timing repeats")
    ap.add_argument("--peers", action="store_true",
                    help="also time ONNX Runtime and OpenVINO (dense) next to the compiled model")
    ap.add_argument("--plans", type=Path, default=Path("benchmarks/out/finetuned_plans"),
                    help="where the fine-tuned plans are saved (not committed)")
    ap.add_argument("--hidden-layers", default=None,
                    help="also distil these modules' outputs ('auto': the transformer blocks)")
    ap.add_argument("--retime", action="store_true",
                    help="train nothing: compile and time the saved fine-tuned plans again")
    ap.add_argument("--reuse-plans", action="store_true",
                    help="take a configuration's saved fine-tuned plan (--plans) instead of "
                         "training it again (after a run that stopped before its row)")
    ap.add_argument("--int8", action="store_true",
                    help="MiniLM: also compile each TETRIS plan in int8, measure its quality and "
                         "time it against OpenVINO float32 and int8")
    ap.add_argument("--allocation", default=None,
                    help="per-layer sparsities: sensitivity (TETRIS default) or uniform "
                         "(element-wise default: its sensitivity refit is too slow)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    results: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
    results.setdefault("rows", [])
    done = {_key(r) for r in results["rows"]}
    for name, d in DEFAULTS.items():
        if args.only and name not in args.only:
            continue
        task = Task(name, d["batch"])
        results.setdefault("dense", {})[name] = task.dense
        dense_cm = tetris_tvm.compile(task.model, task.example, sparsity=0.0)
        peer_runners = {}
        for peer, reason in (peers.available().items() if args.peers else ()):
            if reason is None:
                peer_runners[peer] = peers.runner(peer, task.model, task.example)
            else:
                print(f"{peer}: skipped ({reason})", flush=True)
        if args.retime:
            for row in results["rows"]:
                path = Path(row.get("plan_file", ""))
                if row["model"] != name or row["method"] != "tetris" or not path.is_file():
                    continue
                retime(task, row, dense_cm, args.repeats, peer_runners)
                args.json.write_text(json.dumps(results, indent=1, default=float))
                print(f"{name} s={row['sparsity']} block {row['block']}: pruned "
                      f"{row['ms_pruned']:.2f} ms, ours dense {row['ms_ours_dense']:.2f} ms, "
                      + ", ".join(f"{p} {row['ms_' + p]:.2f} ms" for p in peer_runners),
                      flush=True)
            continue
        steps, lr = args.steps or d["steps"], args.lr or d["lr"]
        baselines = None  # for --int8: built at the first row that needs them
        for cfg in args.configs or d["configs"]:
            s, block = float(cfg.split(":")[0]), block_of(cfg.split(":")[1])
            b = block_name(block)
            for method in args.methods:
                allocation = args.allocation or ("uniform" if method == "element"
                                                 else "sensitivity")
                key = (name, s, b, method, steps, args.hidden_layers, allocation)
                if key in done:
                    continue
                int8 = None
                if args.int8 and name == "minilm" and method == "tetris":
                    if baselines is None:
                        baselines = int8_baselines(task)
                    int8 = baselines
                row = run(task, s, block, method, steps, lr, max(steps // 6, 1), dense_cm,
                          args.repeats, args.hidden_layers, allocation, peer_runners,
                          args.plans, int8, args.reuse_plans)
                row.update(model=name, sparsity=s, block=b, method=method)
                results["rows"].append(row)
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=1, default=float))
                keys = [k for k in ("cosine", "pair_spearman", "wordsim353", "accuracy",
                                    "seconds", "ms_pruned", "ms_torch_eager")
                        if row.get(k) is not None]
                print(f"{name} s={s} {block[0]}x{block[1]} {method}: "
                      + ", ".join(f"{k} {row[k]:.3f}" for k in keys), flush=True)
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
