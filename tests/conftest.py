"""Offline fixtures: a tiny BERT (2 layers, width 32, WordPiece vocabulary of the synthetic corpus's words) and a
small synthetic BEIR data set where each query shares words with its relevant documents."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
TOPICS = 8
WORDS_PER_TOPIC = 10


def synthetic_words() -> list[list[str]]:
    return [[f"t{t}w{w}" for w in range(WORDS_PER_TOPIC)] for t in range(TOPICS)]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [w for topic in synthetic_words() for w in topic] + ["filler", "common", "the", "a"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = specials + words + chars + [f"##{c}" for c in chars]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    return str(path)


def write_beir(root: Path, n_docs: int = 64, n_queries: int = 32, seed: int = 0, dev: bool = False) -> Path:
    """Docs of topic t use topic-t words; query i is relevant to doc i (same topic, shares 3 of its words)."""
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
    return root


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory) -> Path:
    return write_beir(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> str:
    path = tmp_path / "cache"
    monkeypatch.setenv("LIT_DR_CACHE", str(path))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return str(path)


@pytest.fixture(autouse=True)
def _quiet(monkeypatch) -> None:
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_SILENT", "true")
