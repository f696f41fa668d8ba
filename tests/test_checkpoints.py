"""Checkpoints stand alone: a warm start is read once, at the start of a fresh fit, so every later checkpoint loads,
validates, tests, resumes and (LTRe) exports after the warm-start file is gone; a resume keeps the checkpoint's
weights; no lit_dr loader runs a pickle; gradient checkpointing is non-reentrant and exact under gradient caching;
`RandomState` restores each process's own generators, on fewer devices too, from older refresh states too, and a
fit without a refresh resumed mid-epoch ends with the same weights."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from lit_dr import BM25Negatives, Encoder, LTRe, RetrievalDataModule
from lit_dr.objectives.random_state import RandomState
from lit_dr.training.refresh import NegativeRefresh


def data(tiny_beir, tiny_model_dir, cache_dir, **kw) -> RetrievalDataModule:
    args = dict(tokenizer=tiny_model_dir, cache_dir=cache_dir, train_batch_size=4, num_negatives=0, negatives="none",
                show_progress=False)
    return RetrievalDataModule(str(tiny_beir), **{**args, **kw})


def trainer(root: Path, **kw) -> L.Trainer:
    args = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(root), deterministic=True,
                enable_checkpointing=False)
    return L.Trainer(**{**args, **kw})


def adamw(params):
    return torch.optim.AdamW(params, lr=3e-3)


def towers(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k.startswith(("encoder.", "doc_encoder."))}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


@pytest.fixture(scope="module")
def tiny_beir(tmp_path_factory) -> Path:
    from lit_dr.data.synthetic import write_beir

    return write_beir(tmp_path_factory.mktemp("beir") / "tiny", dev=True, test=True)


@pytest.fixture()
def warm_start(tiny_beir, tiny_model_dir, cache_dir, tmp_path) -> str:
    """A BM25-negatives checkpoint after 4 steps: stage 1."""
    L.seed_everything(0)
    model = BM25Negatives(encoder=Encoder(tiny_model_dir, normalize=True), temperature=0.1, optimizer=adamw)
    t = trainer(tmp_path / "warm", max_steps=4, limit_val_batches=0)
    t.fit(model, data(tiny_beir, tiny_model_dir, cache_dir))
    t.save_checkpoint(tmp_path / "warm.ckpt")
    return str(tmp_path / "warm.ckpt")


def ltre(tiny_model_dir, warm: str, tmp_path) -> LTRe:
    return LTRe(encoder=Encoder(tiny_model_dir, normalize=True), init_checkpoint=warm, depth=20, temperature=0.1,
                optimizer=adamw, run_dir=str(tmp_path / "runs"), eval_depth=20)


def test_ltre_stage_validates_tests_resumes_and_exports_after_its_warm_start_is_deleted(
        tiny_beir, tiny_model_dir, cache_dir, tmp_path, warm_start):
    from lit_dr.commands.export import export_checkpoint

    L.seed_everything(0)
    model = ltre(tiny_model_dir, warm_start, tmp_path)
    t = trainer(tmp_path / "ltre", max_steps=2, limit_val_batches=0)
    t.fit(model, data(tiny_beir, tiny_model_dir, cache_dir))
    stage2 = tmp_path / "ltre.ckpt"
    t.save_checkpoint(stage2)
    reference = {run: getattr(trainer(tmp_path / f"{run}0"), run)(model, data(tiny_beir, tiny_model_dir, cache_dir),
                                                                  verbose=False)[0] for run in ("validate", "test")}
    warm_docs = BM25Negatives.load_from_checkpoint(warm_start).eval()
    docs = data(tiny_beir, tiny_model_dir, cache_dir)
    docs.prepare_data()
    docs.setup()
    with torch.no_grad():
        want = warm_docs.encode_docs(docs.corpus.batch(np.arange(6))).numpy()  # (6, H) as the index holds them
    # A checkpoint written before LTRe kept its document tower takes it from the warm start while that exists.
    legacy = torch.load(stage2, weights_only=True)
    legacy["state_dict"] = {k: v for k, v in legacy["state_dict"].items() if not k.startswith("doc_encoder.")}
    torch.save(legacy, tmp_path / "legacy.ckpt")
    assert_same(towers(LTRe.load_from_checkpoint(tmp_path / "legacy.ckpt")), towers(model))
    # A later stage warm-started from LTRe takes its trained query tower, not the frozen document copy.
    ance = BM25Negatives(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir, normalize=True))
    ance.load_tower_weights(str(stage2))
    assert_same(towers(ance), {k: v for k, v in towers(model).items() if k.startswith("encoder.")})
    Path(warm_start).unlink()  # the README: delete a stage to run it again
    with pytest.raises(FileNotFoundError, match="predates the frozen document tower"):
        LTRe.load_from_checkpoint(tmp_path / "legacy.ckpt")

    loaded = LTRe.load_from_checkpoint(stage2)
    assert_same(towers(loaded), towers(model))
    # As `lit-dr validate/test --ckpt_path`: a module built from the config (naming the deleted warm start).
    for run in ("validate", "test"):
        again = ltre(tiny_model_dir, warm_start, tmp_path)
        got = getattr(trainer(tmp_path / run), run)(again, data(tiny_beir, tiny_model_dir, cache_dir),
                                                    ckpt_path=str(stage2), verbose=False)[0]
        assert got == pytest.approx(reference[run], abs=1e-6), run
    resumed = ltre(tiny_model_dir, warm_start, tmp_path)
    trainer(tmp_path / "resume", max_steps=3, max_epochs=5, limit_val_batches=0).fit(
        resumed, data(tiny_beir, tiny_model_dir, cache_dir), ckpt_path=str(stage2))
    assert resumed.global_step == 3
    out = export_checkpoint(stage2, tmp_path / "export")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(out), device="cpu")
    texts = [f"{d['title']} {d['text']}" for d in map(json.loads, (Path(tiny_beir) / "corpus.jsonl").open())][:6]
    got = st.encode_document(texts, convert_to_numpy=True)
    np.testing.assert_allclose(got, want, atol=1e-4)  # the document side is the (deleted) warm start's tower


class TowersAtTrainStart(L.Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.towers = towers(pl_module)


def test_a_fresh_fit_warm_starts_once_and_a_restored_module_never_again(tiny_beir, tiny_model_dir, cache_dir,
                                                                        tmp_path, warm_start):
    warm = towers(BM25Negatives.load_from_checkpoint(warm_start))
    L.seed_everything(0)
    model = BM25Negatives(encoder=Encoder(tiny_model_dir, normalize=True), temperature=0.1, optimizer=adamw,
                          init_checkpoint=warm_start)
    seen = TowersAtTrainStart()
    t = trainer(tmp_path / "stage2", max_steps=2, limit_val_batches=0, callbacks=[seen])
    t.fit(model, data(tiny_beir, tiny_model_dir, cache_dir))
    assert_same(seen.towers, warm)  # Python construction, then fit: the warm start is applied
    t.save_checkpoint(tmp_path / "stage2.ckpt")
    saved = towers(model)

    # Another valid checkpoint now at the warm start's path, then none at all: neither may reach the weights.
    other = BM25Negatives(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir, normalize=True))
    torch.save({"state_dict": {k: v + 1 for k, v in other.state_dict().items()}}, warm_start)
    for replaced in (True, False):
        if not replaced:
            Path(warm_start).unlink()
        resumed = BM25Negatives(encoder=Encoder(tiny_model_dir, normalize=True), temperature=0.1, optimizer=adamw,
                                init_checkpoint=warm_start)
        seen = TowersAtTrainStart()
        trainer(tmp_path / f"resume{replaced}", max_steps=3, max_epochs=5, limit_val_batches=0, callbacks=[seen]).fit(
            resumed, data(tiny_beir, tiny_model_dir, cache_dir), ckpt_path=str(tmp_path / "stage2.ckpt"))
        assert_same(seen.towers, saved)  # the checkpoint's weights, not the warm start's
        restored = BM25Negatives.load_from_checkpoint(tmp_path / "stage2.ckpt", optimizer=adamw)
        seen = TowersAtTrainStart()
        trainer(tmp_path / f"again{replaced}", max_steps=1, limit_val_batches=0, callbacks=[seen]).fit(
            restored, data(tiny_beir, tiny_model_dir, cache_dir))
        assert_same(seen.towers, saved)


class RunsCode:
    """Unpickling this writes a file: what a stranger's checkpoint could do with `weights_only=False`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_no_lit_dr_loader_runs_a_pickle_in_a_checkpoint(tiny_beir, tiny_model_dir, cache_dir, tmp_path, warm_start):
    from lit_dr.commands.export import export_checkpoint
    from lit_dr.commands.inference import load_towers
    from lit_dr.objectives.checkpoints import trained_class

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    checkpoint = torch.load(warm_start, weights_only=True)
    torch.save({**checkpoint, "extra": RunsCode(marker)}, evil)
    module = BM25Negatives(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir, normalize=True))
    loaders = {"load_tower_weights": lambda: module.load_tower_weights(str(evil)),
               "load_from_checkpoint": lambda: BM25Negatives.load_from_checkpoint(evil),
               "trained_class": lambda: trained_class(evil),
               "export": lambda: export_checkpoint(evil, tmp_path / "export"),
               "load_towers": lambda: load_towers(evil)}
    for name, load in loaders.items():
        with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
            load()
        assert not marker.exists(), name
    # A warm start from a stranger: refused when the fit applies it.
    warm_evil = BM25Negatives(encoder=Encoder(tiny_model_dir, normalize=True), optimizer=adamw,
                              init_checkpoint=str(evil))
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        trainer(tmp_path / "fit", max_steps=1, limit_val_batches=0).fit(warm_evil, data(tiny_beir, tiny_model_dir,
                                                                                          cache_dir))
    assert not marker.exists()
    # An LTRe checkpoint whose warm start was later replaced by the stranger's file: export never reads it.
    model = ltre(tiny_model_dir, warm_start, tmp_path)
    t = trainer(tmp_path / "ltre", max_steps=1, limit_val_batches=0)
    t.fit(model, data(tiny_beir, tiny_model_dir, cache_dir))
    t.save_checkpoint(tmp_path / "ltre.ckpt")
    shutil.copy(evil, warm_start)
    export_checkpoint(tmp_path / "ltre.ckpt", tmp_path / "ltre-export")
    load_towers(tmp_path / "ltre.ckpt")
    assert not marker.exists()


# -- gradient checkpointing -----------------------------------------------------------------------------------------
def test_gradient_checkpointing_is_non_reentrant_and_exact_under_gradient_caching(tiny_beir, tiny_model_dir,
                                                                                  cache_dir, tmp_path, monkeypatch):
    import transformers

    # transformers < 5 checkpoints reentrantly unless told otherwise: emulate that default here.
    original = transformers.PreTrainedModel._activation_checkpointing_enable

    def reentrant_by_default(self, kwargs=None, *args, **kw):
        return original(self, {"use_reentrant": True} if kwargs is None else kwargs, *args, **kw)

    monkeypatch.setattr(transformers.PreTrainedModel, "_activation_checkpointing_enable", reentrant_by_default)
    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    config = json.loads((model_dir / "config.json").read_text())
    config["hidden_dropout_prob"] = config["attention_probs_dropout_prob"] = 0.0
    (model_dir / "config.json").write_text(json.dumps(config))
    dm = data(tiny_beir, str(model_dir), cache_dir, num_negatives=1, negatives="random")
    dm.prepare_data()
    dm.setup("fit")
    batch = dm.train_batch(np.arange(6))
    grads = []
    for checkpointing, chunk in ((False, None), (True, 2), (True, None)):
        torch.manual_seed(0)
        module = BM25Negatives(optimizer=torch.optim.AdamW, encoder=Encoder(str(model_dir), projection_dim=8, normalize=True,
                                               gradient_checkpointing=checkpointing),
                               temperature=0.1, grad_cache_chunk_size=chunk)
        module.training_step(batch, 0).backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})
    for other in grads[1:]:
        assert other.keys() == grads[0].keys()
        for name in grads[0]:
            torch.testing.assert_close(other[name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


# -- the refresh's random generators --------------------------------------------------------------------------------
def test_each_process_restores_its_own_generator_and_a_missing_one_is_no_error():
    from lit_dr.objectives.random_state import restore_rng_state

    states = {}
    for rank in (0, 1):
        torch.manual_seed(100 + rank)
        states[rank] = {"torch": torch.get_rng_state()}
    cpu = torch.device("cpu")
    assert restore_rng_state(states, 1, cpu)
    assert torch.equal(torch.get_rng_state(), states[1]["torch"])  # rank 1 gets its own, not rank 0's
    torch.manual_seed(7)
    mine = torch.get_rng_state()
    assert not restore_rng_state(states, 2, cpu)  # a third process resuming a 2-process run
    assert torch.equal(torch.get_rng_state(), mine)


def test_refresh_resumes_on_fewer_gpus_with_each_process_its_own_device_state(monkeypatch, tmp_path):
    """No GPU here: torch.cuda's generator calls are replaced by a fake of 2 devices, then 1."""
    fake = {"count": 2, "states": {0: torch.tensor([0], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)},
            "set": []}

    def set_all(states):
        if len(states) > fake["count"]:
            raise IndexError("list index out of range")  # what torch does for a device that is not there
        fake["set"].append(("all", [int(s[0]) for s in states]))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: fake["count"])
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [fake["states"][i] for i in range(fake["count"])])
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": fake["states"][torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device="cuda": fake["set"].append((torch.device(device).index, int(state[0]))))
    gpu0 = torch.device("cuda", 0)
    saving = SimpleNamespace(strategy=SimpleNamespace(root_device=gpu0), global_rank=0, world_size=1,
                             is_global_zero=True)
    callback = RandomState()
    callback.setup(saving, SimpleNamespace(device=gpu0), "fit")
    state = callback.state_dict()  # a 2-GPU machine's process 0

    fake["count"] = 1  # resumed where one GPU is visible
    resumed = RandomState()
    resumed.load_state_dict(state)
    resumed.on_train_start(saving, SimpleNamespace(device=gpu0))
    assert fake["set"] == [(0, 0)]  # device 0's own state, on device 0 only


def test_generators_saved_by_an_older_refresh_are_restored(caplog):
    """Checkpoints written before `RandomState` hold the generators in the refresh's state, under "rng": per rank,
    or (older still) rank 0's CPU state and every device's CUDA states."""
    cpu = SimpleNamespace(global_rank=1, world_size=3, is_global_zero=False)
    want = [torch.manual_seed(seed).get_state() for seed in (11, 12)]
    by_rank = {"by_rank": {0: {"torch": want[0]}, 1: {"torch": want[1]}}}
    for name, saved, rank, expected in (("per rank", by_rank, 1, want[1]), ("oldest", {"torch": want[0], "cuda": []},
                                                                            0, want[0])):
        checkpoint = {"callbacks": {"NegativeRefresh": {"generation": 2, "rng": saved}, "ModelCheckpoint{}": {}}}
        torch.manual_seed(5)
        callback = RandomState()
        callback.on_load_checkpoint(cpu, None, checkpoint)
        callback.on_train_start(SimpleNamespace(global_rank=rank, world_size=2, is_global_zero=rank == 0),
                                SimpleNamespace(device=torch.device("cpu")))
        assert torch.equal(torch.get_rng_state(), expected), name
    # Its own state wins over a refresh's; the refresh ignores the old key.
    torch.manual_seed(6)
    own = RandomState().state_dict()
    callback = RandomState()
    callback.on_load_checkpoint(cpu, None, {"callbacks": {"NegativeRefresh": {"rng": by_rank}, "RandomState": own}})
    callback.load_state_dict(own)
    torch.manual_seed(5)
    with caplog.at_level("WARNING"):
        callback.on_train_start(SimpleNamespace(global_rank=0, world_size=2, is_global_zero=True),
                                SimpleNamespace(device=torch.device("cpu")))
    assert torch.equal(torch.get_rng_state(), own["rng"]["by_rank"][0]["torch"])
    assert "generators of 1 process(es), this run has 2" in caplog.text
    refresh = NegativeRefresh()
    refresh.load_state_dict({"generation": 2, "last_step": 8, "table_path": None, "table_digest": None,
                             "table_dir": None, "rng": by_rank})
    assert refresh.generation == 2 and not hasattr(refresh, "rng")


def test_a_fit_without_refresh_resumed_mid_epoch_ends_with_the_same_weights(tiny_beir, tiny_model_dir, cache_dir,
                                                                            tmp_path):
    """BM25 negatives, the tiny BERT's dropout on (0.1), a checkpoint after step 3 of an 8-batch epoch; the resumed
    fit starts, as a new process would, from the seed, so only the checkpointed generators can make it match."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    config = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    assert config["hidden_dropout_prob"] > 0  # else there would be nothing to restore
    dm_args = dict(num_negatives=1, negatives="bm25", bm25_depth=20)

    def fit(root, steps, ckpt_path=None):
        L.seed_everything(0)
        model = BM25Negatives(encoder=Encoder(tiny_model_dir, normalize=True), temperature=0.1, optimizer=adamw)
        checkpoints = ModelCheckpoint(dirpath=root, every_n_train_steps=1, save_top_k=-1, filename="s{step}",
                                      auto_insert_metric_name=False)
        dm = data(tiny_beir, tiny_model_dir, cache_dir, **dm_args)
        t = trainer(root, max_steps=steps, limit_val_batches=0, enable_checkpointing=True,
                    callbacks=[RandomState(), checkpoints])
        t.fit(model, dm, ckpt_path=ckpt_path)
        assert len(t.train_dataloader) > 3  # the checkpoint at step 3 is mid-epoch
        return towers(model)

    uninterrupted = fit(tmp_path / "a", 6)
    fit(tmp_path / "b", 3)  # interrupted after step 3
    resumed = fit(tmp_path / "b", 6, ckpt_path=str(tmp_path / "b" / "s3.ckpt"))
    assert_same(uninterrupted, resumed)


def test_a_checkpoint_from_before_the_layers_loads(tiny_model_dir, tmp_path, caplog):
    """Checkpoints written before issue 17 name the tower `lit_dr.encoder.Encoder` and hold `embedding_dir` /
    `embedding_dtype` (now the data module's): both load, the moved options ignored with a warning."""
    import lightning

    from lit_dr import BiEncoderModule

    model = BM25Negatives(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir, normalize=True),
                          temperature=0.1)
    hparams = dict(model.hparams)
    hparams["encoder"] = {**hparams["encoder"], "class_path": "lit_dr.encoder.Encoder"}
    hparams.update(embedding_dir=None, embedding_dtype="float32")
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "global_step": 3,
                "pytorch-lightning_version": lightning.__version__,
                "lit_dr": {"class_path": "lit_dr.modules.bm25neg.BM25Negatives", "last_evaluation": None}}, path)
    with caplog.at_level(logging.WARNING, logger="lit_dr.objectives.checkpoints"):
        loaded = BiEncoderModule.load_from_checkpoint(path)
    assert type(loaded) is BM25Negatives and loaded.temperature == 0.1
    assert "embedding_dir" not in loaded.hparams and any("data module's options" in r.getMessage()
                                                         for r in caplog.records)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, msg=name)
