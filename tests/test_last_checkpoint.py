"""`last.ckpt` of a short fit is weights only unless asked; a fit planned long enough keeps the full state and
resumes from it (the CLI's `last_checkpoint`, lit_dr/commands/defaults.yaml)."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch

from lit_dr import BM25Negatives, Encoder, RetrievalDataModule
from lit_dr.training import LastCheckpoint


def fit(root, tiny_beir, tiny_model_dir, cache_dir, steps: int, ckpt_path=None, **checkpoint):
    L.seed_everything(0)
    model = BM25Negatives(encoder=Encoder(tiny_model_dir, normalize=True), temperature=0.1,
                          optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    data = RetrievalDataModule(str(tiny_beir), tokenizer=tiny_model_dir, cache_dir=cache_dir, train_batch_size=4,
                               num_negatives=0, negatives="none", show_progress=False)
    last = LastCheckpoint(dirpath=root, save_last="link", filename="latest-step{step}", **checkpoint)
    t = L.Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, callbacks=[last], default_root_dir=root)
    t.fit(model, data, ckpt_path=ckpt_path)
    return torch.load(root / "last.ckpt", map_location="cpu", weights_only=True)


def test_a_short_fit_keeps_weights_only_unless_asked(tmp_path, tiny_beir, tiny_model_dir, cache_dir, caplog):
    with caplog.at_level(logging.INFO, logger="lit_dr.training.last_checkpoint"):
        short = fit(tmp_path / "short", tiny_beir, tiny_model_dir, cache_dir, steps=2, full_state_min_steps=3)
    assert "optimizer_states" not in short and short["state_dict"]
    assert "full_state_min_steps=0" in caplog.text  # says how to ask for it
    asked = fit(tmp_path / "asked", tiny_beir, tiny_model_dir, cache_dir, steps=2, full_state_min_steps=0)
    assert asked["optimizer_states"] and asked["lr_schedulers"] is not None
    long = fit(tmp_path / "long", tiny_beir, tiny_model_dir, cache_dir, steps=3, full_state_min_steps=3)
    assert long["optimizer_states"]
    # An explicit save_weights_only: true stays weights only, however long the fit.
    forced = fit(tmp_path / "forced", tiny_beir, tiny_model_dir, cache_dir, steps=3, full_state_min_steps=0,
                 save_weights_only=True)
    assert "optimizer_states" not in forced


def test_a_full_state_last_checkpoint_resumes_and_a_weights_only_one_says_why_not(tmp_path, tiny_beir,
                                                                                  tiny_model_dir, cache_dir):
    root = tmp_path / "a"
    fit(root, tiny_beir, tiny_model_dir, cache_dir, steps=2, full_state_min_steps=0)
    resumed = fit(tmp_path / "b", tiny_beir, tiny_model_dir, cache_dir, steps=4, full_state_min_steps=0,
                  ckpt_path=str(root / "last.ckpt"))
    assert resumed["global_step"] == 4
    fit(tmp_path / "c", tiny_beir, tiny_model_dir, cache_dir, steps=2)
    with pytest.raises(Exception, match="(?i)optimizer|weights"):
        fit(tmp_path / "d", tiny_beir, tiny_model_dir, cache_dir, steps=4, ckpt_path=str(tmp_path / "c" / "last.ckpt"))


def test_a_negative_threshold_is_refused():
    with pytest.raises(ValueError, match="full_state_min_steps"):
        LastCheckpoint(full_state_min_steps=-1)
