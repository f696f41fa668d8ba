"""Offline stand-ins for a model and a data set: a tiny BERT with a WordPiece vocabulary of synthetic words, a
small BEIR set where queries share words with their relevant documents, and large random BEIR corpora for
scale benchmarks. Shared by the tests, the benchmarks and device checks."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TOPICS = 8
WORDS_PER_TOPIC = 10
EXTRA_WORDS = ("filler", "common", "the", "a")


def synthetic_words() -> list[list[str]]:
    """TOPICS lists of WORDS_PER_TOPIC words, "t{topic}w{word}"; each is one token of the tiny BERT."""
    return [[f"t{t}w{w}" for w in range(WORDS_PER_TOPIC)] for t in range(TOPICS)]


def vocabulary_words() -> list[str]:
    """Every whole word of the tiny BERT's vocabulary (the topic words, then EXTRA_WORDS)."""
    return [w for topic in synthetic_words() for w in topic] + list(EXTRA_WORDS)


def build_tiny_bert(path: str | Path, seed: int = 0) -> str:
    """Save a randomly initialised BERT (2 layers, width 32, 2 heads) and its WordPiece tokenizer to `path`.

    The vocabulary: BERT's specials, `vocabulary_words()`, and the letters and digits with their "##" forms, so
    any lower-case text tokenizes. `seed` seeds the weights. Returns `path` as a string.
    """
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    return _save_tiny_bert(path, specials + vocabulary_words() + chars + [f"##{c}" for c in chars], seed, 128)


def _save_tiny_bert(path: str | Path, vocab: list[str], seed: int, max_positions: int) -> str:
    """A WordPiece tokenizer of `vocab` and a BERT of 2 layers, width 32, 2 heads, weights seeded by `seed`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=max_positions)
    BertModel(config).save_pretrained(path)
    return str(path)


def write_beir(root: Path, n_docs: int = 64, n_queries: int = 32, seed: int = 0, dev: bool = False,
               test: bool = False) -> Path:
    """Docs of topic t use topic-t words; query i is relevant to doc i (same topic, shares 3 of its words).

    `qrels/train.tsv` judges every query; `dev` adds `qrels/dev.tsv` judging q0, `test` adds `qrels/test.tsv`
    judging the first four queries (both also in train).
    """
    rng = np.random.default_rng(seed)
    words = synthetic_words()
    root.mkdir(parents=True, exist_ok=True)
    docs = []
    for i in range(n_docs):
        t = i % TOPICS
        body = " ".join(rng.choice(words[t], size=12)) + " filler common"
        docs.append({"_id": f"d{i}", "title": f"doc {i}", "text": body})
    with open(root / "corpus.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for i in range(n_queries):
            shared = docs[i]["text"].split()[:3]
            f.write(json.dumps({"_id": f"q{i}", "text": " ".join(shared) + " the"}) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(n_queries)]
    (root / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n")
    if dev:
        (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    if test:
        lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(min(4, n_queries))]
        (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


def write_random_corpus(
    root: Path,
    n_docs: int,
    n_queries: int,
    vocab_words: Sequence[str] | None = None,
    mean_words: int = 64,
    seed: int = 0,
    chunk_docs: int = 100_000,
) -> Path:
    """A large BEIR data set of uniformly random words, for speed and memory measurements, not for learning.

    Document lengths are normal(mean_words, mean_words / 4) clipped to [0.6, 1.9] * mean_words (38 to 122 words
    at the default: MS MARCO passages are about 40 to 120 words), titles are empty. Query i is relevant to
    one distinct random document (`qrels/train.tsv`) and is 4 to 10 words taken from its start. Ids are "d{i}"
    and "q{i}". Written in chunks of `chunk_docs` with vectorised NumPy: 1M documents take seconds.

    Args:
        vocab_words: the words to draw from (default: `vocabulary_words()`, one token each for the tiny BERT);
            they must need no JSON escaping.
    """
    words = list(vocabulary_words() if vocab_words is None else vocab_words)
    if any(json.dumps(w) != f'"{w}"' or " " in w or not w for w in words):
        raise ValueError("write_random_corpus: vocab_words must be non-empty, without spaces or JSON escapes")
    if not 0 < n_queries <= n_docs:
        raise ValueError(f"write_random_corpus: need 0 < n_queries <= n_docs, got {n_queries} and {n_docs}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "qrels").mkdir(parents=True, exist_ok=True)

    # Each word as a padded byte row with its trailing space: gathering rows and masking the padding
    # concatenates a whole chunk's text in one NumPy operation.
    encoded = [w.encode() + b" " for w in words]
    width = max(map(len, encoded))
    table = np.zeros((len(words), width), dtype=np.uint8)  # (V, W)
    for i, e in enumerate(encoded):
        table[i, : len(e)] = np.frombuffer(e, dtype=np.uint8)
    word_bytes = np.array([len(e) for e in encoded], dtype=np.int64)  # (V,)
    keep = np.arange(width)[None, :] < word_bytes[:, None]  # (V, W)

    relevant = np.sort(rng.choice(n_docs, size=n_queries, replace=False))  # query i -> doc relevant[i]
    query_lengths = rng.integers(4, 11, size=n_queries)
    query_words: list[np.ndarray] = []
    lo, hi = max(1, round(0.6 * mean_words)), max(1, round(1.9 * mean_words))
    with open(root / "corpus.jsonl", "wb") as f:
        for start in range(0, n_docs, chunk_docs):
            n = min(chunk_docs, n_docs - start)
            lengths = np.clip(np.rint(rng.normal(mean_words, mean_words / 4, size=n)), lo, hi).astype(np.int64)
            ids = rng.integers(len(words), size=int(lengths.sum()))  # (T,) word ids of the chunk, doc after doc
            text = table[ids][keep[ids]].tobytes()  # all documents' words, each followed by a space
            ends = np.cumsum(word_bytes[ids])[np.cumsum(lengths) - 1]  # (n,) byte end of each document
            begins = np.concatenate([[0], ends[:-1]])
            word_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            for k in np.flatnonzero(np.isin(np.arange(start, start + n), relevant)):
                q = len(query_words)
                query_words.append(ids[word_starts[k] : word_starts[k] + min(query_lengths[q], lengths[k])])
            f.write(b"".join(
                b'{"_id": "d%d", "title": "", "text": "%s"}\n' % (start + k, text[b : e - 1])
                for k, (b, e) in enumerate(zip(begins.tolist(), ends.tolist(), strict=True))
            ))
    with open(root / "queries.jsonl", "w") as f:
        for i, w in enumerate(query_words):
            f.write(json.dumps({"_id": f"q{i}", "text": " ".join(words[j] for j in w)}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{d}\t1" for i, d in enumerate(relevant.tolist())]
    (root / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n")
    return root


# MS MARCO passage ranking v1 as distributed: collection.tsv, queries.train.tsv + qrels.train.tsv,
# queries.dev.small.tsv + qrels.dev.small.tsv.
MSMARCO_COUNTS = {"passages": 8_841_823, "train_queries": 502_939, "train_judgments": 532_761,
                  "dev_queries": 6_980, "dev_judgments": 7_437}


def letter_words(n: int) -> list[str]:
    """`n` distinct lower-case words of 3 or more letters ("aaa", "baa", ...): base-26 numerals from 26**2 up,
    so none is a single letter (a tokenizer's character pieces) and none needs escaping in TSV or JSON."""
    words = []
    for i in range(26**2, 26**2 + n):
        letters = []
        while i:
            i, r = divmod(i, 26)
            letters.append(chr(97 + r))
        words.append("".join(letters))
    return words


def build_word_bert(path: str | Path, words: Sequence[str], seed: int = 0) -> str:
    """`build_tiny_bert`'s model (2 layers, width 32, 2 heads) with `words` as whole-word tokens beside BERT's
    specials and the letters and digits (with their "##" forms): a generated corpus of `words` tokenizes one token
    per word, as real text does about 1.3. Returns `path` as a string."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars),
                                *words]))
    return _save_tiny_bert(path, vocab, seed, 512)


def lognormal_lengths(rng: np.random.Generator, n: int, mean: float, sigma: float, lo: int, hi: int) -> np.ndarray:
    """(n,) int64 lengths: round(lognormal) with E = `mean` before rounding and clipping to [lo, hi]."""
    mu = np.log(mean) - sigma**2 / 2  # E[exp(N(mu, sigma^2))] = exp(mu + sigma^2 / 2)
    return np.clip(np.rint(rng.lognormal(mu, sigma, size=n)), lo, hi).astype(np.int64)


def write_msmarco(
    root: str | Path,
    passages: int = MSMARCO_COUNTS["passages"],
    train_queries: int = MSMARCO_COUNTS["train_queries"],
    train_judgments: int = MSMARCO_COUNTS["train_judgments"],
    dev_queries: int = MSMARCO_COUNTS["dev_queries"],
    dev_judgments: int = MSMARCO_COUNTS["dev_judgments"],
    vocab_size: int = 30_000,
    mean_words: float = 56.0,
    sigma: float = 0.5,
    query_mean_words: float = 6.0,
    seed: int = 0,
    chunk: int = 200_000,
) -> dict[str, int]:
    """An MS MARCO passage set of random text in its TSV layout, written to `root.tmp` and renamed to `root`.

    Words come from `letter_words(vocab_size)` with Zipf frequencies (p_r ~ 1 / (r + 2.7), as word counts in
    English text), so BM25's postings are long for a few words and short for most, as in real text.
    Passage lengths are lognormal (sigma 0.5) with mean `mean_words`, clipped to [2, 300] words: MS MARCO's
    passages average about 56 words, with a long tail. Query lengths are lognormal (sigma 0.4), mean
    `query_mean_words`, clipped to [1, 30]; a query's words are drawn from its first relevant passage. Each query
    has one relevant passage (distinct while there are enough), and queries chosen at random get one more until
    the judgments number `*_judgments` (MS MARCO: 1.06 per query). Ids: pid = row, train qids 0..T-1, dev qids
    from 10**9 (MS MARCO's queries of all splits go into one store, so they must not collide).
    Files: collection.tsv, queries.train.tsv, qrels.train.tsv, queries.dev.small.tsv, qrels.dev.small.tsv (TREC
    "qid 0 pid 1"). Returns the counts written.
    """
    n_queries = train_queries + dev_queries
    if not (0 < passages and 0 < train_queries <= train_judgments and 0 <= dev_queries <= dev_judgments):
        raise ValueError(f"write_msmarco: need passages > 0 and 0 < queries <= judgments per split, got {passages} "
                         f"passages, {train_queries}/{train_judgments} train, {dev_queries}/{dev_judgments} dev")
    rng = np.random.default_rng(seed)
    root = Path(root)
    tmp = root.with_name(root.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    words = letter_words(vocab_size)
    encoded = [w.encode() + b" " for w in words]
    width = max(map(len, encoded))
    table = np.zeros((len(words), width), dtype=np.uint8)  # (V, W): each word and its space, padded
    for i, e in enumerate(encoded):
        table[i, : len(e)] = np.frombuffer(e, dtype=np.uint8)
    word_bytes = np.array([len(e) for e in encoded], dtype=np.int64)  # (V,)
    keep = np.arange(width)[None, :] < word_bytes[:, None]  # (V, W)
    cdf = np.cumsum(1.0 / (np.arange(vocab_size) + 2.7))
    cdf /= cdf[-1]

    source = rng.choice(passages, size=n_queries, replace=n_queries > passages)  # query q's first positive
    q_lengths = lognormal_lengths(rng, n_queries, query_mean_words, 0.4, 1, 30)
    q_words: list[np.ndarray | None] = [None] * n_queries
    order = np.argsort(source, kind="stable")
    with open(tmp / "collection.tsv", "wb") as f:
        for start in range(0, passages, chunk):
            n = min(chunk, passages - start)
            lengths = lognormal_lengths(rng, n, mean_words, sigma, 2, 300)
            ids = np.searchsorted(cdf, rng.random(int(lengths.sum())))  # (T,) word ids, passage after passage
            text = table[ids][keep[ids]].tobytes()
            ends = np.cumsum(word_bytes[ids])[np.cumsum(lengths) - 1]  # (n,) byte end of each passage
            begins = np.concatenate([[0], ends[:-1]])
            first_word = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            lo, hi = np.searchsorted(source[order], [start, start + n])
            for q in order[lo:hi].tolist():  # queries whose first positive is in this chunk
                k = source[q] - start
                q_words[q] = ids[first_word[k] + rng.integers(lengths[k], size=q_lengths[q])]
            f.write(b"".join(b"%d\t%s\n" % (start + k, text[b : e - 1])
                             for k, (b, e) in enumerate(zip(begins.tolist(), ends.tolist(), strict=True))))

    def qrels(name: str, qids: np.ndarray, first: np.ndarray, judgments: int) -> None:
        extra = rng.choice(len(qids), size=judgments - len(qids), replace=judgments - len(qids) > len(qids))
        second = (first[extra] + 1 + rng.integers(max(1, passages - 1), size=len(extra))) % passages
        pairs = sorted(set(zip(qids.tolist(), first.tolist(), strict=True)) | set(zip(qids[extra].tolist(), second.tolist(), strict=True)))
        with open(tmp / f"qrels.{name}.tsv", "w") as f:
            f.write("".join(f"{q}\t0\t{p}\t1\n" for q, p in pairs))
        counts[f"{name}_judgments"] = len(pairs)

    counts = {"passages": passages}
    splits = (("train", np.arange(train_queries), slice(0, train_queries)),
              ("dev.small", 10**9 + np.arange(dev_queries), slice(train_queries, n_queries)))
    for name, qids, part in splits:
        with open(tmp / f"queries.{name}.tsv", "w") as f:
            f.write("".join(f"{q}\t{' '.join(words[w] for w in ws.tolist())}\n"
                            for q, ws in zip(qids.tolist(), q_words[part], strict=True)))
        counts[f"{name}_queries"] = len(qids)
        qrels(name, qids, source[part], train_judgments if name == "train" else dev_judgments)
    if root.exists():
        import shutil

        shutil.rmtree(root)
    os.replace(tmp, root)
    return counts
