"""Held-out quality: real text and images that install offline, split once, and the metrics.

Pruning and fine-tuning may only see the *calibration / training* side of every split; quality
is only ever measured on the *held-out* side, in the calibration's domain and out of it.

Text (sentence embeddings, all-MiniLM-L6-v2):

- ``lee_background.cor`` (300 news documents) and ``lee.cor`` (50 more) ship as test data in
  the ``gensim`` wheel (``pip install --no-deps gensim==4.4.0``; the files are found with
  ``importlib.util.find_spec``, gensim itself is never imported). Their sentences of five or
  more words are split by document: the background corpus is for calibration and training,
  ``lee.cor`` is held out (the *in-domain* held-out set: same news source and style).
- The standard library's ``pydoc_data.topics`` (Python's own documentation): more training
  text for distillation, present on every Python.
- Out-of-domain held-out sets, from sources no calibration or training step reads:
  ``"conversation"``, the English dialogues of ``chatterbot-corpus``
  (``pip install --no-deps chatterbot-corpus==1.3.3``, short questions and answers), and
  ``"technical"``, prose of scikit-learn's documentation (its dataset descriptions and the
  summaries of its public docstrings, read from the installed package's source files without
  importing it; scikit-learn comes with mlxtend). Python's documentation in the training
  text is technical writing too, so ``"conversation"`` is the furthest from anything a
  pruning step saw.
- ``wordsim353.tsv`` and ``simlex999.txt`` (also in gensim's test data): word pairs with human
  similarity scores, an external benchmark no pruning step ever sees.

Images: mlxtend's 5000 MNIST digits, split class-balanced and fixed into 4000 for calibration
and fine-tuning and 1000 held out.

Metrics of a pruned encoder against its dense original on the held-out sentences:
``cosine`` (mean cosine between pruned and dense sentence embeddings, in-domain),
``cosine_conversation`` and ``cosine_technical`` (the same out of domain) and ``cosine_ood``
(their mean), ``pair_spearman`` (Spearman of all pairwise in-domain sentence similarities
against the dense model's), and Spearman of embedding cosine against the human scores on
WordSim353 and SimLex-999.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TextSplit",
    "split_sentences",
    "text_split",
    "OUT_OF_DOMAIN",
    "out_of_domain",
    "word_pairs",
    "mnist_split",
    "minilm_calibration",
    "vocabulary_words",
    "minilm_training_batches",
    "mnist_training_batches",
    "mnist_calibration",
    "spearman",
    "sentence_embeddings",
    "embedding_metrics",
    "mean_row_cosine",
    "EncoderEvaluator",
    "classifier_accuracy",
]

_MIN_WORDS = 5


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{package} is not installed: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _gensim_data() -> Path:
    return _package_dir("gensim", "pip install --no-deps gensim==4.4.0") / "test" / "test_data"


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a document (a plain rule: ., ! or ? followed by a capital or digit)."""
    text = re.sub(r"\s+", " ", text.replace("--", " - ")).strip()
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _corpus_sentences(path: Path) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for doc in path.read_text(encoding="latin-1").splitlines():
        for s in split_sentences(doc):
            if len(s.split()) >= _MIN_WORDS and s not in seen:
                seen.add(s)
                out.append(s)
    return out


def _chatterbot_utterances() -> list[str]:
    import yaml

    root = _package_dir("chatterbot_corpus", "pip install --no-deps chatterbot-corpus==1.3.3")
    out: list[str] = []
    for f in sorted((root / "data" / "english").glob("*.yml")):
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations", []) or []:
            for u in conv if isinstance(conv, list) else [conv]:
                if isinstance(u, str) and len(u.split()) >= 3:
                    out.append(" ".join(u.split()))
    return list(dict.fromkeys(out))


def _pydoc_sentences() -> list[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it
        return []
    out: list[str] = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            if para.startswith(" ") or ">>>" in para:  # code, not prose
                continue
            for s in split_sentences(para):
                if 5 <= len(s.split()) <= 60:
                    out.append(s)
    return list(dict.fromkeys(out))


_DOC_SECTION = re.compile(
    r"^\s*(Parameters|Returns|Attributes|See Also|Notes|Examples|References|Yields|Raises|"
    r"Read more)\b", re.M)


def _prose_sentences(text: str) -> list[str]:
    """Sentences of the prose paragraphs of reStructuredText / a docstring (no headings,
    directives, lists, tables or code; no sentence with code-like characters)."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in para.strip().splitlines()]
        if not lines or lines[0].startswith((">>>", "..", ":", "|", "=", "-", "*", "+", "#")):
            continue
        if any(set(line) <= set("=-~^*+ ") for line in lines):  # a heading underline
            continue
        para = re.sub(r"[`*]|:\w+:", "", " ".join(lines))
        for s in split_sentences(para):
            if (5 <= len(s.split()) <= 60 and s[0].isupper() and s[-1] in ".!?"
                    and not re.search(r"[{}\[\]=<>_]", s)):
                out.append(s)
    return out


def _sklearn_doc_sentences() -> list[str]:
    import ast

    root = _package_dir("sklearn", "pip install scikit-learn (it comes with mlxtend)")
    out: list[str] = []
    for f in sorted((root / "datasets" / "descr").glob("*.rst")):
        out += _prose_sentences(f.read_text(encoding="utf-8"))
    for f in sorted(root.rglob("*.py")):
        parts = f.relative_to(root).parts
        if any(p.startswith(("_", "test")) for p in parts[:-1]):
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module)) and not getattr(
                    node, "name", "").startswith("_"):
                doc = ast.get_docstring(node)
                if doc:
                    out += _prose_sentences(_DOC_SECTION.split(doc)[0])
    return list(dict.fromkeys(out))


OUT_OF_DOMAIN = ("conversation", "technical")
"""The out-of-domain held-out sets :func:`out_of_domain` returns."""


@functools.lru_cache(maxsize=4)
def out_of_domain(n: int = 256, seed: int = 0) -> dict[str, tuple[str, ...]]:
    """``{name: sentences}`` of every out-of-domain held-out set (:data:`OUT_OF_DOMAIN`), at
    most ``n`` sentences of five or more words each (a fixed sample), none of them in the
    calibration or training text. A set whose package is missing is left out."""
    seen = set(text_split().train)
    sources: dict[str, Callable[[], list[str]]] = {
        "conversation": lambda: [s for s in _chatterbot_utterances()
                                 if len(s.split()) >= _MIN_WORDS],
        "technical": _sklearn_doc_sentences,
    }
    out: dict[str, tuple[str, ...]] = {}
    for name in OUT_OF_DOMAIN:
        try:
            pool = [s for s in sources[name]() if s not in seen]
        except ImportError:
            continue
        rng = np.random.default_rng(seed)
        picked = sorted(rng.choice(len(pool), min(n, len(pool)), replace=False))
        out[name] = tuple(pool[i] for i in picked)
    return out


@dataclass(frozen=True)
class TextSplit:
    """Disjoint sentence sets: ``calibration`` (to prune with), ``train`` (to fine-tune on,
    a superset of ``calibration``), ``heldout`` (to measure on; shares no sentence)."""

    calibration: tuple[str, ...]
    train: tuple[str, ...]
    heldout: tuple[str, ...]


@functools.lru_cache(maxsize=4)
def text_split(extra_train: bool = True) -> TextSplit:
    """The fixed in-domain text split. ``calibration`` is the Lee background corpus; ``train``
    adds Python's documentation when ``extra_train``; ``heldout`` is ``lee.cor``, minus any
    sentence that also occurs in a training source. The out-of-domain held-out sets are
    :func:`out_of_domain`."""
    data = _gensim_data()
    calibration = _corpus_sentences(data / "lee_background.cor")
    train = list(calibration)
    if extra_train:
        train += _pydoc_sentences()
    train = list(dict.fromkeys(train))
    seen = set(train)
    heldout = [s for s in _corpus_sentences(data / "lee.cor") if s not in seen]
    return TextSplit(tuple(calibration), tuple(train), tuple(heldout))


@functools.lru_cache(maxsize=4)
def word_pairs(name: str) -> tuple[tuple[str, str, float], ...]:
    """``(word1, word2, human score)`` of ``"wordsim353"`` or ``"simlex999"``."""
    files = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt"}
    if name not in files:
        raise ValueError(f"unknown word-pair set {name!r}; known: {', '.join(files)}")
    pairs = []
    for line in (_gensim_data() / files[name]).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        a, b, score = line.split("\t")[:3]
        pairs.append((a.strip(), b.strip(), float(score)))
    return tuple(pairs)


def mnist_split(
    n_heldout_per_class: int = 100,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """mlxtend's MNIST sample as ``(train_x, train_y), (heldout_x, heldout_y)``.

    Class-balanced and fixed: the last ``n_heldout_per_class`` images of every class (in the
    file's order) are held out, the rest (4000 by default) are for calibration and training.
    Images are normalised as the digit-recognizer model expects, shape ``(n, 1, 28, 28)``.
    """
    from .zoo import mnist_data

    x, y = mnist_data()
    held = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        held[idx[-n_heldout_per_class:]] = True
    return (x[~held], y[~held]), (x[held], y[held])


def minilm_calibration(
    tokenizer: Any, n: int = 512, batch: int = 32, seed: int = 0, source: str = "calibration",
    words: int = 0,
) -> list[dict[str, Any]]:
    """``n`` sentences drawn (fixed seed) from the calibration (or ``"train"``) side of
    :func:`text_split`, tokenised in batches of similar length: a list of tokenizer outputs
    (``input_ids``, ``attention_mask``, ...) to pass as ``calibration=``.

    ``words``: that many single vocabulary words (:func:`vocabulary_words`, none of the
    word-similarity sets) in batches after the sentences, so that recovery also fits the short
    inputs an encoder sees (docs/quality.md, "Calibration text needs short inputs too")."""
    split = text_split()
    pool = split.calibration if source == "calibration" else split.train
    if source not in ("calibration", "train"):
        raise ValueError(f"source must be 'calibration' or 'train', got {source!r}")
    rng = np.random.default_rng(seed)
    picked = [pool[i] for i in rng.choice(len(pool), min(n, len(pool)), replace=False)]
    picked.sort(key=len)
    batches = [
        dict(tokenizer(picked[i : i + batch], padding=True, truncation=True, max_length=128,
                       return_tensors="pt"))
        for i in range(0, len(picked), batch)
    ]
    if words:
        single = vocabulary_words(tokenizer, words, seed=seed)
        batches += [dict(tokenizer(single[i : i + batch], padding=True, return_tensors="pt"))
                    for i in range(0, len(single), batch)]
    return batches


def vocabulary_words(tokenizer: Any, n: int, seed: int = 0) -> list[str]:
    """``n`` whole-word tokens of ``tokenizer``'s vocabulary (letters only, longer than 3),
    drawn with a fixed seed, none of them a word of the WordSim353 or SimLex-999 pairs."""
    held = {w.lower() for name in ("wordsim353", "simlex999")
            for a, b, _ in word_pairs(name) for w in (a, b)}
    vocab = sorted(w for w in tokenizer.get_vocab()
                   if w.isalpha() and len(w) > 3 and w.lower() not in held)
    if n > len(vocab):
        raise ValueError(f"words: the vocabulary has {len(vocab)} eligible words, asked for {n}")
    rng = np.random.default_rng(seed)
    return [vocab[i] for i in rng.choice(len(vocab), n, replace=False)]


def minilm_training_batches(
    tokenizer: Any, batch: int = 32, max_length: int = 64, seed: int = 0
) -> list[dict[str, Any]]:
    """The training side of :func:`text_split` (Lee background, chatterbot, Python docs) as
    tokenised batches of similar length (little padding); :func:`tetris_tvm.finetune`
    shuffles their order every epoch."""
    sents = list(text_split().train)
    rng = np.random.default_rng(seed)
    rng.shuffle(sents)
    sents.sort(key=len)  # stable: equal lengths keep the shuffled order
    return [
        dict(tokenizer(sents[i : i + batch], padding=True, truncation=True,
                       max_length=max_length, return_tensors="pt"))
        for i in range(0, len(sents), batch)
    ]


def mnist_training_batches(batch: int = 64, seed: int = 0) -> list[tuple[Any, Any]]:
    """The 4000 training images of :func:`mnist_split` as shuffled ``(images, labels)``
    batches (labels drive the task loss next to distillation)."""
    import torch

    (x, y), _ = mnist_split()
    idx = np.random.default_rng(seed).permutation(len(x))
    return [
        (torch.from_numpy(x[idx[i : i + batch]]), torch.from_numpy(y[idx[i : i + batch]]))
        for i in range(0, len(idx) - batch + 1, batch)
    ]


def mnist_calibration(n: int = 1000, batch: int = 250, seed: int = 0) -> list[Any]:
    """``n`` images (fixed seed) of the 4000-image training side of :func:`mnist_split`, as a
    list of torch batches."""
    import torch

    (x, _), _ = mnist_split()
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(x), min(n, len(x)), replace=False))
    return [torch.from_numpy(x[idx[i : i + batch]]) for i in range(0, len(idx), batch)]


# ---------------------------------------------------------------------------------------------
# metrics


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def sentence_embeddings(
    model: Any, tokenizer: Any, sentences: Sequence[str], batch: int = 64, max_length: int = 128
) -> np.ndarray:
    """L2-normalised mean-pooled last hidden states (as sentence-transformers computes them).

    Sentences are batched by length so little padding is computed; the result keeps the
    order of ``sentences``.
    """
    import torch

    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    out = np.zeros((len(sentences), 0), dtype=np.float32)
    chunks = []
    with torch.no_grad():
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            enc = tokenizer(
                [sentences[j] for j in idx], padding=True, truncation=True,
                max_length=max_length, return_tensors="pt",
            )
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden.last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            chunks.append((idx, pooled.float().numpy()))
    if chunks:
        out = np.zeros((len(sentences), chunks[0][1].shape[1]), dtype=np.float32)
        for idx, emb in chunks:
            out[idx] = emb
    return out


def _pairwise_upper(e: np.ndarray) -> np.ndarray:
    sims = e @ e.T
    return sims[np.triu_indices(len(e), k=1)]


def _mean_dot(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine of matching rows of two L2-normalised embedding matrices."""
    return float(np.mean(np.sum(a * b, axis=1)))


def mean_row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine of matching rows (e.g. tokens' hidden states) of two matrices of any scale;
    a zero row counts as cosine 0."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)))


def embedding_metrics(dense: np.ndarray, pruned: np.ndarray) -> dict[str, float]:
    """``cosine`` and ``pair_spearman`` of normalised embeddings against the dense ones."""
    cos = _mean_dot(dense, pruned)
    pairs = spearman(_pairwise_upper(dense), _pairwise_upper(pruned))
    return {"cosine": cos, "pair_spearman": pairs}


class EncoderEvaluator:
    """Held-out metrics of (pruned) copies of one sentence encoder.

    Built once per dense model: it embeds the held-out sentences (in-domain and every
    out-of-domain set) and the word-pair sets with the dense model, so every candidate is
    compared on the same data. ``evaluate(model)`` returns ``cosine`` and ``pair_spearman``
    (in-domain), ``cosine_<set>`` for each out-of-domain set and ``cosine_ood`` (their mean),
    and ``wordsim353`` / ``simlex999`` (Spearman of embedding cosine against the human
    scores); ``dense`` holds the dense model's values.
    """

    def __init__(
        self,
        dense_model: Any,
        tokenizer: Any,
        sentences: Sequence[str] | None = None,
        word_sets: Sequence[str] = ("wordsim353", "simlex999"),
        other_domains: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """``sentences``: the in-domain held-out set (default ``lee.cor``);
        ``other_domains``: ``{name: sentences}`` held out from other sources (default
        :func:`out_of_domain`; ``{}`` for none)."""
        self.tokenizer = tokenizer
        self.sentences = list(text_split().heldout if sentences is None else sentences)
        if not self.sentences:
            raise ValueError("EncoderEvaluator needs at least one held-out sentence")
        domains = out_of_domain() if other_domains is None else other_domains
        self.other_domains = {name: list(s) for name, s in domains.items() if len(s)}
        self.word_sets = {name: word_pairs(name) for name in word_sets}
        words = sorted({w for ps in self.word_sets.values() for a, b, _ in ps for w in (a, b)})
        self.words = words
        self._word_index = {w: i for i, w in enumerate(words)}
        self.dense_sentences = sentence_embeddings(dense_model, tokenizer, self.sentences)
        self.dense_domains = {name: sentence_embeddings(dense_model, tokenizer, s)
                              for name, s in self.other_domains.items()}
        self.dense = self._word_scores(sentence_embeddings(dense_model, tokenizer, words))
        self.dense.update(cosine=1.0, pair_spearman=1.0)
        if self.other_domains:
            self.dense.update({f"cosine_{name}": 1.0 for name in self.other_domains},
                              cosine_ood=1.0)

    def _word_scores(self, word_emb: np.ndarray) -> dict[str, float]:
        out = {}
        for name, pairs in self.word_sets.items():
            ia = [self._word_index[a] for a, _, _ in pairs]
            ib = [self._word_index[b] for _, b, _ in pairs]
            sims = np.sum(word_emb[ia] * word_emb[ib], axis=1)
            out[name] = spearman(sims, [s for _, _, s in pairs])
        return out

    def evaluate(self, model: Any) -> dict[str, float]:
        """Held-out metrics of ``model`` (a torch encoder with the dense model's interface)."""
        emb = sentence_embeddings(model, self.tokenizer, self.sentences)
        out = embedding_metrics(self.dense_sentences, emb)
        ood = []
        for name, sents in self.other_domains.items():
            got = sentence_embeddings(model, self.tokenizer, sents)
            out[f"cosine_{name}"] = _mean_dot(self.dense_domains[name], got)
            ood.append(out[f"cosine_{name}"])
        if ood:
            out["cosine_ood"] = float(np.mean(ood))
        out.update(self._word_scores(sentence_embeddings(model, self.tokenizer, self.words)))
        return out


def classifier_accuracy(
    model: Callable[[Any], Any], images: np.ndarray, labels: np.ndarray, batch: int = 500
) -> float:
    """Top-1 accuracy of a torch classifier on ``images`` (numpy, NCHW)."""
    import torch

    correct = 0
    with torch.no_grad():
        for i in range(0, len(labels), batch):
            logits = model(torch.from_numpy(images[i : i + batch]))
            correct += int((logits.argmax(1).numpy() == labels[i : i + batch]).sum())
    return correct / max(len(labels), 1)
