"""Offline fixtures: a tiny BERT (2 layers, width 32, WordPiece vocabulary of the synthetic corpus's words) and a
small synthetic BEIR data set where each query shares words with its relevant documents."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lit_dr.data.synthetic import build_tiny_bert, synthetic_words, write_beir  # noqa: F401 (tests import them)

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


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
