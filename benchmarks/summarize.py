"""Print the result tables of docs/ (markdown) from the committed results files.

    python benchmarks/summarize.py            # everything
    python benchmarks/summarize.py quality    # docs/quality.md's tables only
    python benchmarks/summarize.py readme     # the README's headline tables
    python benchmarks/summarize.py int8       # MiniLM at every precision (docs/int8.md)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def reorder_table() -> None:
    path = RESULTS / "reorder.json"
    if not path.exists():
        return
    data = json.loads(path.read_text())
    rows = [r for r in data["rows"] if r["weight"].startswith("minilm/")]
    print("\nMiniLM, 32x32 blocks, 75% of blocks pruned (retained L1; gap closed in brackets)\n")
    print("| layer kind | layers | element | block | paper swap | assign (default) | balanced |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    kinds = {
        "attention q/k/v/out 384x384": lambda n: "attention" in n,
        "FFN up 1536x384": lambda n: "intermediate" in n,
        "FFN down 384x1536": lambda n: ".output.dense" in n and "attention" not in n,
        "pooler 384x384": lambda n: "pooler" in n,
    }
    for kind, pick in kinds.items():
        sel = [r for r in rows if pick(r["weight"])]
        if not sel:
            continue

        def cell(m: str, sel: list = sel) -> str:
            v = np.mean([r[m] for r in sel])
            gc = [r.get(f"{m}_gap_closed") for r in sel]
            if m in ("element", "block") or gc[0] is None:
                return f"{v:.4f}"
            return f"{v:.4f} ({np.mean(gc):+.0%})"

        cells = " | ".join(cell(m) for m in ("element", "block", "swap", "assign", "balanced"))
        print(f"| {kind} | {len(sel)} | {cells} |")
    s = data["summary"]
    print(f"\nassign > swap on {sum(r['assign'] > r['swap'] for r in rows)}/{len(rows)} layers; "
          f"FFN gap closed: assign {s['ffn_mean_gap_closed_assign']:.1%}, "
          f"swap {s['ffn_mean_gap_closed_swap']:.1%}")
    for r in data["rows"]:
        if r["weight"].startswith("gaussian/4096"):
            print(f"4096x4096 32x32 75%: assign {r['assign_s']:.1f} s "
                  f"(retained {r['assign']:.4f} vs block {r['block']:.4f})")
    if "fc6_4096x25088" in s:
        f = s["fc6_4096x25088"]
        print(f"4096x25088: {f['seconds']:.0f} s, peak RSS {f['peak_rss_gib']:.2f} GiB")


def models_table() -> None:
    path = RESULTS / "models.json"
    if not path.exists():
        return
    data = json.loads(path.read_text())
    cases = data["cases"]
    if not cases or "best_dense_ms" not in cases[0]:
        return
    sparse = sorted({k for c in cases for k in c["variants"] if k.startswith("ours s=")})
    dense = ["torch eager", "onnxruntime", "openvino", "ours dense"]
    print(f"\nMedian ms, interleaved in one process, 2 threads ({data['meta']['processor']}); "
          "in brackets the speedup over the best dense runtime of the row\n")
    print("| model | batch | block | " + " | ".join(dense + sparse) + " |")
    print("| --- | --- | --- |" + " --- |" * (len(dense) + len(sparse)))
    for c in cases:
        cells = []
        for k in dense + sparse:
            v = c["variants"].get(k)
            cells.append("-" if v is None else
                         f"{v['ms']:.2f} ({v['speedup_vs_best_dense']:.2f}x)")
        print(f"| {c['model']} | {c['batch']} | {c['block']}x{c['block']} | "
              + " | ".join(cells) + " |")
    print("\nCompile (or export / convert) seconds\n")
    print("| model | batch | " + " | ".join(dense[1:] + sparse) + " |")
    print("| --- | --- |" + " --- |" * (len(dense) - 1 + len(sparse)))
    for c in cases:
        cells = [f"{c['variants'][k]['compile_s']:.1f}" if k in c["variants"] else "-"
                 for k in dense[1:] + sparse]
        print(f"| {c['model']} | {c['batch']} | " + " | ".join(cells) + " |")
    if "call_overhead_us" in data:
        o = data["call_overhead_us"]
        print("\nCall overhead (a 64x64 Linear at batch 1, us per call): "
              + ", ".join(f"{k} {v:.1f}" for k, v in o.items()))


def deploy_table() -> None:
    path = RESULTS / "deploy.json"
    if not path.exists():
        return
    data = json.loads(path.read_text())
    print("\n| model | architecture | max rel. error vs masked torch | model .so | TVM runtime | "
          "runner | runner (C++) | tetris_tvm.load (Python) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in data["rows"]:
        t = (f"{r['runner_ms']:.3f} ms | {r['python_load_ms']:.3f} ms" if "runner_ms" in r
             else "- | -")
        print(f"| {r['model']} | {r['arch']} | {r['max_rel_err']:.1e} | "
              f"{r['model_bytes'] / 1024:.0f} KiB | {r['runtime_bytes'] / 2**20:.1f} MiB | "
              f"{r['runner_bytes'] / 1024:.0f} KiB | {t} |")


def cpu_schedules_table() -> None:
    path = RESULTS / "cpu_schedules.json"
    if not path.exists():
        return
    data = json.loads(path.read_text())
    print("\nDepthwise 3x3 conv + folded batch norm + ReLU6, batch 1 (ms; in brackets the "
          "speedup of GroupedConv2d)\n")
    print("| channels x side | stride | GroupedConv2d | without deinterleaving | Fallback |")
    print("| --- | --- | --- | --- | --- |")
    for r in data["depthwise"]:
        ours = r["ms_grouped_conv"]
        strided = r.get("ms_grouped_conv_strided")
        mid = f"{strided:.3f} ({strided / ours:.1f}x)" if strided else "-"
        print(f"| {r['channels']} x {r['side']} | {r['stride']} | {ours:.3f} | {mid} | "
              f"{r['ms_fallback']:.3f} ({r['ms_fallback'] / ours:.1f}x) |")
    print("\nDense 1x1 conv register tiles (ms; in brackets the speedup of the rule table's)\n")
    print("| batch x cin -> cout @ side | rule table tile | its time | 8 x 32 tile |")
    print("| --- | --- | --- | --- |")
    for r in data["pointwise"]:
        ours = r["ms_rule_table"]
        tile = "x".join(str(t) for t in r["rule_table_tile"])
        print(f"| {r['batch']} x {r['cin']} -> {r['cout']} @ {r['side']} | {tile} | "
              f"{ours:.3f} | {r['ms_8x32']:.3f} ({r['ms_8x32'] / ours:.1f}x) |")
    if "linear" in data:
        print("\nDense linear + bias + GELU, packed-weight panel width (ms, GFLOP/s; in brackets "
              "the speedup of 32-wide panels)\n")
        print("| x -> N | 32-wide panels | 16-wide panels |")
        print("| --- | --- | --- |")
        for r in data["linear"]:
            a, b = r["ms_panel_32"], r["ms_panel_16"]
            shape = "x".join(str(d) for d in r["x_shape"])
            print(f"| {shape} -> {r['n']} | {a:.3f} ({r['gflops'] / a * 1e3:.0f}) | "
                  f"{b:.3f} ({r['gflops'] / b * 1e3:.0f}) ({b / a:.2f}x) |")


def kernels_table() -> None:
    path = RESULTS / "kernels.json"
    if not path.exists():
        return
    rows = json.loads(path.read_text())["rows"]
    print("\nspeedup over the faster dense (ours or torch); fraction of ideal 1/(1-s) in brackets")
    for block in (16, 32):
        print(f"\nblocks {block}x{block}\n")
        print("| op | shape | M / batch | s=0.5 | s=0.75 | s=0.9 | vs torch BSR at 0.9 |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        cases: dict = {}
        for r in rows:
            if r["block"] == block:
                cases.setdefault((r["op"], r["shape"], r["m_or_batch"]), {})[r["sparsity"]] = r
        for (op, shape, m), by_s in cases.items():
            cells = []
            for sp in (0.5, 0.75, 0.9):
                r = by_s.get(sp)
                cells.append("-" if r is None else f"{r['vs_dense']:.2f}x ({r['frac_ideal']:.2f})")
            r9 = by_s.get(0.9, {})
            tb = r9.get("vs_torch_bsr")
            print(f"| {op} | {shape} | {m} | " + " | ".join(cells)
                  + f" | {'-' if tb is None else f'{tb:.1f}x'} |")

    def target(r: dict) -> float:
        if r["op"].startswith("conv"):
            return 0.6
        if r["m_or_batch"] == 1:
            return 0.6
        return 0.7 if r["sparsity"] >= 0.9 else 0.8

    met = sum(r["frac_ideal"] >= target(r) for r in rows)
    print(f"\n{met}/{len(rows)} cases reach their fraction-of-ideal goal "
          "(0.6 at batch 1, 0.7 at s=0.9, else 0.8)")
    at9 = [r for r in rows if r["sparsity"] == 0.9 and "vs_torch_bsr" in r]
    fast = sum(min(r["vs_torch_bsr"], r["vs_scipy_bsr"]) >= 10 for r in at9)
    print(f"{fast}/{len(at9)} linear cases at s=0.9 are >= 10x faster than torch and scipy BSR")


def tuning_tables() -> None:
    path = RESULTS / "tuning_minilm.json"
    if path.exists():
        data = json.loads(path.read_text())
        print(f"\nMiniLM batch {data['batch']}, seq {data['seq']}, sparsity {data['sparsity']} "
              "(end to end, ms, interleaved medians)\n")
        print("| build | trials | tuning time | ms | vs default | vs torch eager |")
        print("| --- | --- | --- | --- | --- | --- |")
        print(f"| torch eager (dense) | - | - | {data['torch_ms']:.1f} | - | 1.00x |")
        print(f"| ours, default schedules | - | - | {data['default_ms']:.1f} | 1.00x | "
              f"{data['torch_ms'] / data['default_ms']:.2f}x |")
        for run in data["runs"]:
            kept = sum(t["verdict"] == "tuned" for t in run["tasks"])
            print(f"| ours, tuned ({kept}/{len(run['tasks'])} kernels kept a tuned schedule) | "
                  f"{run['trials_this_run']} ({run['trials']}/kernel, cap "
                  f"{run['max_trials_global']}) | {run['tune_s'] / 60:.0f} min | {run['ms']:.1f} | "
                  f"{run['speedup_vs_default']:.2f}x | {run['speedup_vs_torch']:.2f}x |")
        run = data["runs"][-1]
        print("\nHeaviest kernels (latency x calls per run):\n")
        print("| kernel | calls | default us | best tuned us | kept |")
        print("| --- | --- | --- | --- | --- |")
        heavy = sorted(run["tasks"], key=lambda t: -(t["default_us"] or 0) * t["calls"])[:6]
        for t in heavy:
            tuned = f"{t['tuned_us']:.0f}" if t["tuned_us"] is not None else "-"
            print(f"| {t['task'][:48]} | {t['calls']} | {t['default_us']:.0f} | {tuned} | "
                  f"{'tuned' if t['verdict'] == 'tuned' else 'default'} |")
    path = RESULTS / "tuning_kernels.json"
    if path.exists():
        data = json.loads(path.read_text())
        print(f"\nLinear kernels ({data['block']}x{data['block']} blocks, sparsity "
              f"{data['sparsity']}), microseconds: default -> kept, judged after each run\n")
        runs = data["runs"]
        head = " | ".join(f"{r['trials']} trials/kernel" for r in runs)
        print(f"| kernel | space measured | {head} |")
        print("| --- | --- |" + " --- |" * len(runs))
        for i, t in enumerate(runs[0]["tasks"]):
            cells = []
            for r in runs:
                u = r["tasks"][i]
                best = u["tuned_us"] if u["verdict"] == "tuned" else u["default_us"]
                cells.append(f"{u['default_us']:.1f} -> {best:.1f} ({u['default_us'] / best:.2f}x)")
            print(f"| {t['task']} | {runs[-1]['tasks'][i]['trials']} | " + " | ".join(cells) + " |")
        for r in runs:
            print(f"\n{r['trials']} trials: {r['trials_this_run']} measured in this run, "
                  f"{r['tune_s']:.0f} s")


def _metrics(model: str) -> list[tuple[str, str]]:
    if model == "minilm":
        return [("cosine", "cosine in-domain"), ("cosine_conversation", "conversation"),
                ("cosine_technical", "technical"), ("pair_spearman", "pair Spearman"),
                ("wordsim353", "WordSim353"), ("simlex999", "SimLex-999")]
    return [("accuracy", "accuracy")]


def _dense_note(data: dict, model: str, metrics: list[tuple[str, str]]) -> str:
    dense = data.get("dense", {}).get(model, {})
    return ", ".join(f"{lab} {dense.get(k, 1.0):.3f}" for k, lab in metrics)


def _cell(row: dict, key: str) -> str:
    return f"{row[key]:.3f}" if key in row else "-"


def quality_tables(name: str = "quality.json") -> None:
    path = RESULTS / name
    if not path.exists():
        return
    data = json.loads(path.read_text())
    for model in ("minilm", "mnist-cnn"):
        rows = [r for r in data["rows"] if r["model"] == model]
        if not rows:
            continue
        metrics = [(k, lab) for k, lab in _metrics(model) if any(k in r for r in rows)]
        configs = sorted({(r["sparsity"], r["block"]) for r in rows})
        for s, b in configs:
            print(f"\n{model}, {b}x{b} blocks, sparsity {s}, one-shot, held-out "
                  f"(dense: {_dense_note(data, model, metrics)})\n")
            head = " | ".join(lab for _, lab in metrics)
            print(f"| recipe | {head} | retained L1 | time (s) | ms (torch eager / pruned) |")
            print("| --- |" + " --- |" * (len(metrics) + 3))
            for r in rows:
                if (r["sparsity"], r["block"]) != (s, b):
                    continue
                cells = " | ".join(_cell(r, k) for k, _ in metrics)
                ms = (f"{r['ms_torch_eager']:.1f} / {r['ms_pruned']:.1f}"
                      if "ms_pruned" in r else "-")
                print(f"| {r['recipe']} | {cells} | {r['retained_l1']:.3f} | "
                      f"{r['seconds']:.0f} | {ms} |")


def calibration_size_table() -> None:
    """One-shot recovery against the calibration set's size (benchmarks/calibration_size.py)."""
    path = RESULTS / "calibration_size.json"
    if not path.exists():
        return
    data = json.loads(path.read_text())
    print(f"\n{data['model']}, {data['block']}x{data['block']} blocks, sparsity "
          f"{data['sparsity']}, the compiler's plan (plan_model), held-out cosine to the dense "
          f"embeddings (`{data['command']}`)\n")
    print("| calibration | in-domain | conversation | technical | held-back check: output "
          "error recovered / plain | plan used | time (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in data["rows"]:
        check = r.get("holdout_check") or {}
        errors = (f"{check['recovered']:.3f} / {check['plain']:.3f}" if check else "-")
        used = check.get("used", "recovered") if check else "plain (no calibration)"
        print(f"| {r['calibration']} | {r['cosine']:.3f} | {r['cosine_conversation']:.3f} | "
              f"{r['cosine_technical']:.3f} | {errors} | {used} | {r['seconds']:.0f} |")


def _block(row: dict) -> str:
    """A row's block as RxC (rows record a square block by its side)."""
    b = row["block"]
    return f"{b}x{b}" if isinstance(b, int) else str(b)


def finetune_tables() -> None:
    path = RESULTS / "finetune.json"
    if not path.exists():
        return
    data = json.loads(path.read_text())
    for model in ("minilm", "mnist-cnn"):
        rows = [r for r in data["rows"] if r["model"] == model]
        if not rows:
            continue
        metrics = _metrics(model)
        print(f"\n{model}, fine-tuned with distillation, held-out "
              f"(dense: {_dense_note(data, model, metrics)})\n")
        head = " | ".join(lab for _, lab in metrics)
        times = ("ms_torch_eager", "ms_onnxruntime", "ms_openvino", "ms_ours_dense", "ms_pruned")
        print(f"| sparsity, block | method | recipe | steps | train (min) | {head} | "
              "ms torch eager | ms ONNX Runtime | ms OpenVINO | ms ours dense | ms pruned |")
        print("| --- | --- | --- | --- | --- |" + " --- |" * (len(metrics) + len(times)))
        for r in rows:
            cells = " | ".join(_cell(r, k) for k, _ in metrics)
            ms = " | ".join(f"{r[k]:.1f}" if k in r else "-" for k in times)
            recipe = f"lr {r['lr']:g}" + (", hidden" if r.get("hidden_layers") else "")
            recipe += f", {r.get('allocation', 'sensitivity')}"
            train = "-" if r.get("seconds") is None else f"{r['seconds'] / 60:.1f}"
            print(f"| {r['sparsity']}, {_block(r)} | {r['method']} | {recipe} | "
                  f"{r['steps']} | {train} | {cells} | {ms} |")
        print("\nHeld-out curve (step: first metric)\n")
        for r in rows:
            k = metrics[0][0]
            curve = ", ".join(f"{h['step']}: {h[k]:.3f}" for h in r["history"])
            print(f"- {r['sparsity']} {_block(r)} {r['method']}, {r['steps']} steps, "
                  f"lr {r['lr']:g}{', hidden' if r.get('hidden_layers') else ''}: {curve}")


def headline_table() -> None:
    """The README's table: fine-tuned models whose speed was timed next to the peers."""
    path = RESULTS / "finetune.json"
    if not path.exists():
        return
    data = json.loads(path.read_text())
    rows = [r for r in data["rows"] if r["method"] == "tetris" and "ms_openvino" in r]
    if not rows:
        return
    print("\n| model, sparsity, block | fine-tuning | held-out quality (dense) | torch eager | "
          "ONNX Runtime | OpenVINO | ours dense | ours pruned |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        model = {"minilm": "MiniLM", "mnist-cnn": "MNIST CNN"}[r["model"]]
        dense = data["dense"][r["model"]]
        if r["model"] == "minilm":
            q = (f"cosine {r['cosine']:.3f}, WordSim353 {r['wordsim353']:.3f} "
                 f"(1, {dense['wordsim353']:.3f})")
        else:
            q = f"accuracy {r['accuracy']:.3f} ({dense['accuracy']:.3f})"
        best = min(r[k] for k in ("ms_torch_eager", "ms_onnxruntime", "ms_openvino",
                                  "ms_ours_dense"))
        cells = " | ".join(f"{r[k]:.1f} ms" for k in ("ms_torch_eager", "ms_onnxruntime",
                                                       "ms_openvino", "ms_ours_dense"))
        print(f"| {model}, {r['sparsity']:.0%}, {_block(r)} | {r['steps']} steps, "
              f"{r['seconds'] / 60:.0f} min | {q} | {cells} | {r['ms_pruned']:.1f} ms "
              f"({best / r['ms_pruned']:.2f}x best dense) |")


def int8_table() -> None:
    """MiniLM at every precision: ours against ONNX Runtime and OpenVINO (benchmarks/int8.py)."""
    path = RESULTS / "int8_minilm.json"
    if not path.exists():
        return
    data = json.loads(path.read_text())
    rows = data["rows"]
    batches = sorted({b for r in rows.values() for b in r["ms"]}, key=int, reverse=True)
    ov, ov8 = rows.get("openvino", {}).get("ms", {}), rows.get("openvino-int8", {}).get("ms", {})
    names = {"torch eager (float32)": "torch eager, float32",
             "onnxruntime": "ONNX Runtime, float32", "onnxruntime-int8":
             "ONNX Runtime, int8 (quantize_dynamic)", "openvino": "OpenVINO, float32",
             "openvino-default": "OpenVINO, default precision (bf16 on this CPU)",
             "openvino-int8": "OpenVINO, int8 (NNCF post-training)"}
    print(f"\nall-MiniLM-L6-v2, {data['cpu']}, {data['threads']} threads, 128 tokens, median "
          f"of {data['repeats']} interleaved runs; held-out cosine = mean cosine of the "
          "sentence embeddings to the dense float32 model's, in-domain on lee.cor (news) and "
          "out of domain (mean over conversation and technical prose)\n")
    head = " | ".join(f"batch {b}" for b in batches)
    print(f"| runtime | weights kept | {head} | vs OpenVINO f32 (batch {batches[0]}) | vs "
          f"OpenVINO int8 | cosine in-domain | cosine out-of-domain | WordSim353 |")
    print("| --- | --- |" + " --- |" * len(batches) + " --- | --- | --- | --- | --- |")
    order = ["torch eager (float32)", "onnxruntime", "onnxruntime-int8", "openvino",
             "openvino-default", "openvino-int8"]
    order += [n for n in rows if n not in order]
    b0 = batches[0]
    for name in order:
        r = rows.get(name)
        if r is None:
            continue
        ms = " | ".join(f"{r['ms'][b]:.1f} ms" if b in r["ms"] else "-" for b in batches)
        vs = f"{ov[b0] / r['ms'][b0]:.2f}x" if b0 in ov and b0 in r["ms"] else "-"
        vs8 = f"{ov8[b0] / r['ms'][b0]:.2f}x" if b0 in ov8 and b0 in r["ms"] else "-"
        kept = f"{r['weights_kept']:.2f}" if "weights_kept" in r else "1.00"
        label = names.get(name, name)
        if name.startswith("ours"):
            label = f"**{label}**"
        print(f"| {label} | {kept} | {ms} | {vs} | {vs8} | {r['cosine']:.3f} | "
              f"{_cell(r, 'cosine_ood')} | {r['wordsim353']:.3f} |")


def frontier_table() -> None:
    """Block shapes x precision on MiniLM, one-shot, against the peers (benchmarks/frontier.py)."""
    path = RESULTS / "frontier_minilm.json"
    if not path.exists():
        return
    data = json.loads(path.read_text())
    rows = data["rows"]
    peers = {n: r for n, r in rows.items() if r.get("kind") == "peer" and "ms" in r}
    int8_peers = [r["ms"] for n, r in peers.items() if n.endswith("int8")]
    best8 = min(int8_peers) if int8_peers else None
    print(f"\nall-MiniLM-L6-v2, {data['cpu']}, {data['threads']} threads, batch "
          f"{data['batch']} x {data['seq']} tokens, median of {data['repeats']} interleaved runs; "
          "one-shot plans (256 calibration sentences); held-out cosine to the dense float32 "
          "embeddings, in-domain (lee.cor) and out of domain (conversation, technical prose)\n")
    print("| row | block | weights kept | ms | vs fastest int8 peer | cosine in-domain | "
          "cosine out-of-domain | WordSim353 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in sorted(rows.items(), key=lambda kv: kv[1].get("ms", 1e9)):
        if "ms" not in r:
            continue
        block = "x".join(map(str, r["block"])) if r.get("block") else "-"
        kept = f"{r['weights_kept']:.2f}" if "weights_kept" in r else "1.00"
        vs = f"{best8 / r['ms']:.2f}x" if best8 else "-"
        label = f"**{name}**" if name.startswith("ours") else name
        print(f"| {label} | {block} | {kept} | {r['ms']:.1f} | {vs} | {r['cosine']:.3f} | "
              f"{_cell(r, 'cosine_ood')} | {r['wordsim353']:.3f} |")


def latency_table() -> None:
    """Latency-budget plans against 32x32 at the same latency (benchmarks/latency_allocation.py)."""
    path = RESULTS / "latency_allocation_minilm.json"
    if not path.exists():
        return
    data = json.loads(path.read_text())
    print(f"\nall-MiniLM-L6-v2, {data['cpu']}, {data['threads']} threads, batch "
          f"{data['batch']} x {data['seq']} tokens, median of {data['repeats']} interleaved runs; "
          f"latency budget {data['latency']:g} of the dense build of the same precision\n")
    print("| row | weights kept | predicted ms | ms | x dense | cosine in-domain | "
          "cosine out-of-domain | WordSim353 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in data["rows"].items():
        kept = f"{r['weights_kept']:.2f}" if "weights_kept" in r else "1.00"
        pred = f"{r['predicted_ms']:.1f}" if "predicted_ms" in r else "-"
        dense = f"{r['vs_dense']:.2f}" if "vs_dense" in r else "-"
        print(f"| {name} | {kept} | {pred} | {r['ms']:.1f} | {dense} | {r['cosine']:.3f} | "
              f"{_cell(r, 'cosine_ood')} | {r['wordsim353']:.3f} |")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["frontier"]:
        frontier_table()
        sys.exit(0)
    if sys.argv[1:] == ["latency"]:
        latency_table()
        sys.exit(0)

    if sys.argv[1:] == ["readme"]:
        int8_table()
        headline_table()
        sys.exit(0)
    if sys.argv[1:] == ["int8"]:
        int8_table()
        sys.exit(0)
    quality_tables()
    quality_tables("quality_domains.json")
    calibration_size_table()
    finetune_tables()
    if sys.argv[1:] == ["quality"]:
        sys.exit(0)
    reorder_table()
    models_table()
    cpu_schedules_table()
    deploy_table()
    kernels_table()
    tuning_tables()
