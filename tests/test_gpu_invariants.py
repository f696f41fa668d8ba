"""Invariants behind bugs that only a GPU run showed, pinned on the CPU so the next bug of the same class fails here.

1. bf16-mixed encoding crashed at its second batch: one autocast context (Lightning's `forward_context()`, a
   one-shot generator context manager) was entered once per batch. Contexts must be fresh per batch.
2. Evaluation under NCCL crashed in the metrics: torchmetrics synced its CPU states across processes, which NCCL
   cannot do. Metrics must be a local computation that issues no collective at all.
3. Search must follow the model onto the GPU without a GPU build of FAISS: exact search in torch, other indexes
   on the CPU with one logged line (`search_backend`), and GPU FAISS indexes on the process's own device.
"""

from __future__ import annotations

import contextlib
import logging

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist

from lit_dr import BM25Negatives, Encoder, RetrievalDataModule
from lit_dr.evaluation.metrics import retrieval_metrics, trec_eval_metrics
from lit_dr.index.encoding import autocast_factory, encode_store
from lit_dr.index.search import search_backend


def one_shot_factory(entered: list[int]):
    """Like Lightning's `forward_context`: each call returns a generator context that can be entered only once."""

    @contextlib.contextmanager
    def context():
        entered.append(1)
        yield

    return context


@pytest.fixture()
def tiny_store(tiny_beir, tiny_model_dir, cache_dir):
    dm = RetrievalDataModule(str(tiny_beir), tokenizer=tiny_model_dir, cache_dir=cache_dir, negatives="none",
                             show_progress=False)
    dm.setup("fit")
    return dm.corpus


def test_encoding_enters_a_fresh_autocast_context_per_batch(tiny_store, tiny_model_dir):
    encoder = Encoder(tiny_model_dir).eval()
    entered: list[int] = []
    emb = encode_store(lambda b: encoder(b.input_ids, b.attention_mask), tiny_store, batch_size=10,
                       autocast=one_shot_factory(entered), show_progress=False)
    assert emb.shape == (64, 32)
    assert len(entered) == 7  # ceil(64 / 10) batches, one context each


def test_autocast_factory_is_fresh_per_call_on_gpu_and_absent_on_cpu():
    from lightning.pytorch.plugins.precision import MixedPrecision

    plugin = MixedPrecision("bf16-mixed", "cuda")
    factory = autocast_factory(plugin, torch.device("cuda"))
    with pytest.warns(UserWarning, match="CUDA is not available") if not torch.cuda.is_available() else \
            contextlib.nullcontext():
        for _ in range(3):  # the second entry is where one shared context failed
            with factory():
                pass
    # Never bf16 on the CPU (hundreds of times slower than fp32 there), whatever the trainer's precision.
    cpu_plugin = MixedPrecision("bf16-mixed", "cpu")
    assert autocast_factory(cpu_plugin, torch.device("cpu")) is contextlib.nullcontext


def brute_force_dev_metrics(model, dm) -> dict[str, float]:
    """The oracle: every dev query against every document in float64 (torch), scored by pytrec_eval."""
    model.eval()
    with torch.no_grad():
        docs = encode_store(model.encode_docs, dm.corpus, batch_size=16, show_progress=False).double()  # (N, H)
        rows = np.asarray(dm.split_rows["dev"])
        queries = encode_store(model.encode_queries, dm.queries, rows, batch_size=16, show_progress=False).double()
    scores = queries @ docs.T  # (Q, N)
    run = {str(dm.queries.ids[q]): {str(dm.corpus.ids[d]): float(scores[i, d]) for d in range(len(docs))}
           for i, q in enumerate(rows)}
    qrels = {str(dm.queries.ids[q]): {str(dm.corpus.ids[d]): g for d, g in rel.items()}
             for q, rel in zip(rows, dm.relevance_for(rows, "dev"), strict=True) if rel}
    return trec_eval_metrics(run, qrels)


def test_bf16_mixed_validation_encodes_every_batch_under_autocast(tiny_beir, tiny_model_dir, cache_dir, tmp_path,
                                                                  monkeypatch):
    """The whole evaluation path with autocast on, as on a GPU (forced on the CPU; tiny model, so bf16 is fast),
    against a brute-force float64 ranking of the same model scored by pytrec_eval: the float32 validation must
    match it exactly, the bf16 one within bf16's rounding of the embeddings."""
    L.seed_everything(0)
    model = BM25Negatives(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir, normalize=True), run_dir=str(tmp_path / "runs"))
    dm = RetrievalDataModule(str(tiny_beir), tokenizer=tiny_model_dir, cache_dir=cache_dir, negatives="none",
                             eval_batch_size=8, show_progress=False)

    def validate(precision: str) -> dict[str, float]:
        trainer = L.Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=str(tmp_path / precision))
        return trainer.validate(model, dm, verbose=False)[0]

    fp32 = validate("32-true")
    oracle = brute_force_dev_metrics(model, dm)
    assert 0.05 < oracle["ndcg@10"] < 0.95, oracle  # away from the trivial values, or agreement proves little
    for name, value in oracle.items():
        assert fp32[f"val/{name}"] == pytest.approx(value, abs=1e-5), name
    monkeypatch.setattr("lit_dr.index.encoding.autocast_on", lambda device: True)
    bf16 = validate("bf16-mixed")
    # bf16 keeps 8 bits of mantissa: near-tied documents may swap, so a few hundredths on 8 dev queries, no more.
    for name, value in oracle.items():
        assert bf16[f"val/{name}"] == pytest.approx(value, abs=0.05), name


@pytest.fixture()
def process_group_without_collectives(tmp_path, monkeypatch):
    """An initialised process group in which every collective raises, as NCCL does for CPU tensors."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)

    def refuse(*args, **kwargs):
        raise RuntimeError("No backend type associated with device type cpu")

    for name in ("all_gather", "all_gather_object", "all_reduce", "broadcast", "barrier", "reduce", "gather",
                 "all_gather_into_tensor"):
        monkeypatch.setattr(dist, name, refuse)
    yield
    monkeypatch.undo()
    dist.destroy_process_group()


def test_metrics_issue_no_collective(process_group_without_collectives):
    rng = np.random.default_rng(0)
    scores = np.sort(rng.random((5, 20)).astype(np.float32), axis=1)[:, ::-1].copy()
    ranked = np.stack([rng.permutation(50)[:20] for _ in range(5)])
    relevance = [{int(ranked[q, 3]): 1, 49 - q: 2} for q in range(5)]
    metrics = retrieval_metrics(scores, ranked, relevance)
    run = {f"q{q}": {f"d{d}": float(s) for d, s in zip(ranked[q], scores[q], strict=True)} for q in range(5)}
    qrels = {f"q{q}": {f"d{d}": g for d, g in rel.items()} for q, rel in enumerate(relevance)}
    oracle = trec_eval_metrics(run, qrels)
    assert set(metrics) == set(oracle) == {"ndcg@10", "mrr@10", "recall@100", "recall@1000"}
    for name, value in oracle.items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), name
    assert all(0 < v < 1 for v in oracle.values()), oracle  # not trivially 0 or 1


def test_search_follows_the_model_onto_the_gpu(monkeypatch, caplog):
    import lit_dr.index.search

    monkeypatch.setattr(lit_dr.index.search, "_warned", set())
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 1)
    assert search_backend("Flat", cpu) == search_backend("IVF64,PQ8", cpu) == "faiss"
    assert search_backend("Flat", cuda) == "torch"  # no GPU build of FAISS needed for exact search
    import faiss
    if hasattr(faiss, "StandardGpuResources"):
        assert search_backend("IVF64,PQ8", cuda) == "faiss-gpu"
        return
    with caplog.at_level(logging.WARNING, logger="lit_dr.index.search"):
        assert search_backend("IVF64,PQ8", cuda) == "faiss"
        assert search_backend("IVF64,PQ8", cuda) == "faiss"
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1  # said once, not per search
    assert "no GPU build of FAISS" in caplog.records[0].message


def test_gpu_faiss_index_goes_to_the_process_own_device(monkeypatch):
    """Under DDP each process must put its index on its own GPU, not clone it onto every GPU of the node."""
    import lit_dr.index.faiss_index as fi

    calls = []

    class FakeFaiss:
        StandardGpuResources = object

        @staticmethod
        def get_num_gpus():
            return 8

        @staticmethod
        def index_cpu_to_gpu(res, device, index):
            calls.append(device)
            return index

        @staticmethod
        def index_cpu_to_all_gpus(*args, **kwargs):
            raise AssertionError("cloned onto every GPU")

    monkeypatch.setattr(fi, "import_faiss", lambda: FakeFaiss)
    monkeypatch.setattr(fi, "_GPU_RESOURCES", {})
    fi.to_gpu("index", 3)
    assert calls == [3]
