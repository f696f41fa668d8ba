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


def write_tiny_fit_config(tmp_path: Path, tiny_beir, tiny_model_dir: str, cache_dir: str, name: str,
                          **trainer) -> Path:
    """`<tmp_path>/<name>.yaml`: BM25 negatives on the tiny BERT and tiny BEIR set, CSV-logged under tmp_path/runs;
    `trainer` adds to (or replaces) the trainer's run directory and logger."""
    import yaml

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "model": {"class_path": "lit_dr.BM25Negatives", "init_args": {
            "encoder": {"class_path": "lit_dr.Encoder", "init_args": {"model_name_or_path": tiny_model_dir}},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}}}},
        "data": {"dataset": str(tiny_beir), "cache_dir": cache_dir, "train_batch_size": 4, "show_progress": False},
        "trainer": {"default_root_dir": str(tmp_path),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": "tiny"}}, **trainer},
    }))
    return path
