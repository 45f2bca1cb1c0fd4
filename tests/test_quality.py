"""Held-out data splits and quality metrics."""

import importlib.util

import numpy as np
import pytest

from tetris_tvm import quality

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gensim") is None,
    reason="gensim's test data is not installed: pip install --no-deps gensim==4.4.0",
)


def test_text_split_is_fixed_and_disjoint():
    split = quality.text_split()
    assert len(split.calibration) > 2000 and len(split.heldout) > 100
    assert set(split.calibration) <= set(split.train)
    assert not set(split.heldout) & set(split.train)
    assert all(len(s.split()) >= 5 for s in split.heldout)
    assert quality.text_split() == split


def test_out_of_domain_sets_share_nothing_with_training_or_calibration():
    split = quality.text_split()
    sets = quality.out_of_domain()
    assert set(sets) == set(quality.OUT_OF_DOMAIN)
    seen = set(split.train) | set(split.heldout)
    for name, sents in sets.items():
        assert 200 <= len(sents) <= 256, name
        assert not set(sents) & seen, name
        assert all(len(s.split()) >= 5 for s in sents), name
    assert not set(sets["conversation"]) & set(sets["technical"])
    assert quality.out_of_domain() == sets  # fixed


def test_prose_sentences_leave_out_code_and_headings():
    text = "Title\n=====\n\nThe estimator fits a linear model to the data.\n\n" \
           ">>> fit(X, y)\n\n.. note:: ignored\n\nUse X_train = f(x) for this one."
    assert quality._prose_sentences(text) == ["The estimator fits a linear model to the data."]


def test_evaluator_reports_each_domain():
    class Echo:  # an "encoder" whose hidden state is a hash of the tokens
        def __call__(self, input_ids, attention_mask):
            import torch

            g = torch.Generator().manual_seed(0)
            table = torch.randn(1000, 8, generator=g)
            return (table[input_ids % 1000] * (1 + 0 * attention_mask[..., None]),)

    class Tok:
        def __call__(self, sents, **_):
            import torch

            ids = [[hash(w) % 1000 for w in s.split()][:6] for s in sents]
            n = max(len(i) for i in ids)
            return {"input_ids": torch.tensor([i + [0] * (n - len(i)) for i in ids]),
                    "attention_mask": torch.tensor([[1] * len(i) + [0] * (n - len(i))
                                                    for i in ids])}

    ev = quality.EncoderEvaluator(Echo(), Tok(), sentences=["a b c d e", "f g h i j"],
                                  word_sets=(), other_domains={"chat": ["k l m n o"]})
    got = ev.evaluate(Echo())
    assert got["cosine"] == pytest.approx(1.0) and got["cosine_chat"] == pytest.approx(1.0)
    assert got["cosine_ood"] == pytest.approx(1.0) and ev.dense["cosine_chat"] == 1.0


def test_word_pairs_parse_the_human_scores():
    ws = quality.word_pairs("wordsim353")
    sl = quality.word_pairs("simlex999")
    assert len(ws) == 353 and len(sl) == 999
    assert ("tiger", "cat", 7.35) in ws
    with pytest.raises(ValueError, match="unknown word-pair set"):
        quality.word_pairs("men3000")


def test_mnist_split_is_class_balanced_and_disjoint():
    (tx, ty), (hx, hy) = quality.mnist_split()
    assert tx.shape == (4000, 1, 28, 28) and hx.shape == (1000, 1, 28, 28)
    assert np.all(np.bincount(hy) == 100)
    flat_t = {row.tobytes() for row in tx.reshape(len(tx), -1)}
    assert not any(row.tobytes() in flat_t for row in hx.reshape(len(hx), -1)[:200])


def test_metrics_of_identical_and_scrambled_embeddings():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(30, 16))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    same = quality.embedding_metrics(e, e)
    assert same["cosine"] == pytest.approx(1.0) and same["pair_spearman"] == pytest.approx(1.0)
    other = rng.normal(size=(30, 16))
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    assert quality.embedding_metrics(e, other)["pair_spearman"] < 0.5
    assert quality.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_sentences_split_on_sentence_ends():
    text = 'He left. "Why?" she asked. The U.S. economy grew 3.5 per cent.'
    assert quality.split_sentences(text)[0] == "He left."
    assert len(quality.split_sentences(text)) >= 2


def test_calibration_words_are_vocabulary_words_outside_the_word_similarity_sets():
    class Tok:  # a vocabulary, and batches that record what they were given
        def get_vocab(self):
            words = ["tiger", "cat", "house", "river", "planet", "##ing", "a1b2", "zeppelin",
                     "quokka", "gazebo", "lantern", "harbor", "pencil"]  # first 5 in the sets
            return {w: i for i, w in enumerate(words)}

        def __call__(self, texts, **_):
            return {"texts": list(texts)}

    held = {w.lower() for name in ("wordsim353", "simlex999")
            for a, b, _ in quality.word_pairs(name) for w in (a, b)}
    words = quality.vocabulary_words(Tok(), 4)
    assert len(set(words)) == 4 and words == quality.vocabulary_words(Tok(), 4)
    assert all(w.isalpha() and len(w) > 3 and w.lower() not in held for w in words)
    batches = quality.minilm_calibration(Tok(), n=8, batch=3, words=4)
    plain = quality.minilm_calibration(Tok(), n=8, batch=3)
    assert batches[:len(plain)] == plain  # the sentences first, unchanged
    assert [w for b in batches[len(plain):] for w in b["texts"]] == words
    with pytest.raises(ValueError, match="eligible words"):
        quality.vocabulary_words(Tok(), 1000)
