"""Large batches (`lit_dr.models.large_batch`): gradient caching gives the uncached gradient with dropout on, for every
objective and through a fit with accumulation and clipping; negatives shared by 2 gloo processes give the gradient
of one process on the concatenated batch, with the false-negative mask spanning processes."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from lit_dr import ANCE, DANCE, BM25Negatives, Encoder, LTRe, RetrievalDataModule, SamToNe
from lit_dr.data.batches import TokenBatch
from lit_dr.data.synthetic import write_beir
from lit_dr.models import large_batch

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\(\)`")

OBJECTIVES = {
    "bm25neg": (BM25Negatives, dict(temperature=0.1, exclude_judged_relevant=True)),
    "ance": (ANCE, dict(temperature=0.5)),
    "ance_in_batch": (ANCE, dict(temperature=0.5, in_batch_negatives=True)),
    "samtone": (SamToNe, dict(temperature=0.1, symmetric=True, exclude_judged_relevant=True)),
    "dance": (DANCE, dict(temperature=0.1, dual_weight=0.5)),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: more intra-op threads only add synchronisation, which costs seconds on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def chunked(module_cls, size: int):
    """`module_cls` whose towers embed `size` rows at a time *with* a graph: the uncached step that draws the same
    dropout masks as a cached one with that chunk size (one big forward draws different ones)."""

    def split(encode):
        def run(self, t: TokenBatch):
            parts = [TokenBatch(t.input_ids[i:i + size], t.attention_mask[i:i + size])
                     for i in range(0, len(t.input_ids), size)]
            return torch.cat([encode(self, p) for p in parts])
        return run

    return type(f"Chunked{module_cls.__name__}", (module_cls,), {
        "encode_queries": split(module_cls.encode_queries), "encode_docs": split(module_cls.encode_docs)})


def grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def assert_same_grads(a: dict, b: dict, atol=1e-5) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-5, msg=name)


@pytest.fixture(scope="module")
def train_batch(tiny_beir, tiny_model_dir, tmp_path_factory):
    dm = RetrievalDataModule(str(tiny_beir), tokenizer=tiny_model_dir, cache_dir=str(tmp_path_factory.mktemp("c")),
                             num_negatives=2, num_negative_queries=2, negatives="none", show_progress=False)
    dm.setup("fit")
    return dm.train_batch(dm.split_rows["train"][:5])  # B 5, G 3, K 2: chunks of 3 split every group unevenly


def step_grads(module, batch, seed=0):
    torch.manual_seed(seed)
    module.training_step(batch, 0).backward()
    return grads(module), torch.rand(1)  # and what the random stream draws next


@pytest.mark.parametrize("chunk", [3, 1000])
@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_cached_gradient_equals_uncached_with_dropout(objective, chunk, train_batch, tiny_model_dir):
    module_cls, options = OBJECTIVES[objective]
    torch.manual_seed(0)
    reference = chunked(module_cls, chunk)(encoder=Encoder(tiny_model_dir, projection_dim=8, normalize=True),
                                           **options)
    cached = module_cls(encoder=Encoder(tiny_model_dir, projection_dim=8, normalize=True),
                        grad_cache_chunk_size=chunk, **options)
    cached.load_state_dict(reference.state_dict())
    assert cached.training and cached.encoder.model.config.hidden_dropout_prob > 0
    expected, next_expected = step_grads(reference, train_batch)
    got, next_got = step_grads(cached, train_batch)
    assert_same_grads(got, expected)
    assert torch.equal(next_got, next_expected)  # the second pass left the random stream where one pass leaves it
    # Dropout is really on: another seed gives another gradient.
    reference.zero_grad()
    assert (step_grads(reference, train_batch, seed=1)[0]["encoder.projection.0.weight"]
            - expected["encoder.projection.0.weight"]).abs().max() > 1e-3


def test_cached_gradient_is_wrong_without_replaying_the_random_state(train_batch, tiny_model_dir, monkeypatch):
    """The check above can fail: a second pass with fresh dropout masks gives another gradient."""
    torch.manual_seed(0)
    reference = chunked(SamToNe, 3)(encoder=Encoder(tiny_model_dir), temperature=0.1)
    cached = SamToNe(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir), temperature=0.1, grad_cache_chunk_size=3)
    cached.load_state_dict(reference.state_dict())
    expected = step_grads(reference, train_batch)[0]
    replayed = []
    monkeypatch.setattr(large_batch, "set_rng_state", lambda state, device: replayed.append(state))
    got = step_grads(cached, train_batch)[0]
    assert replayed  # the patched function was the one in use
    assert max((got[n] - expected[n]).abs().max() for n in expected) > 1e-3


def test_excluded_mask_matches_the_data_module_rule():
    excluded = [{3, 7}, set(), {1}]  # RetrievalDataModule.excluded_docs of three queries
    doc_rows = np.array([3, 1, 7, 3, 5])
    naive = [[int(d) in rows for d in doc_rows] for rows in excluded]  # RetrievalDataModule.train_batch's rule
    assert large_batch.excluded_mask(excluded, doc_rows).tolist() == naive


def test_ltre_refuses_the_options(tiny_model_dir):
    for option in ({"grad_cache_chunk_size": 4}, {"cross_device_negatives": True}):
        with pytest.raises(ValueError, match="LTRe does not support"):
            LTRe(encoder=Encoder(tiny_model_dir), **option)


# -- a fit: accumulation and clipping act on the cached gradient as on the uncached one ----------------------------
class RecordGradNorm(L.Callback):
    def __init__(self) -> None:
        self.norms = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # before clipping
        self.norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in pl_module.parameters()])))


def test_fit_with_accumulation_and_clipping_matches_uncached(tiny_beir, tiny_model_dir, cache_dir, tmp_path):
    weights, norms = [], []
    for cls, chunk in ((chunked(DANCE, 3), None), (DANCE, 3)):
        L.seed_everything(0)
        model = cls(encoder=Encoder(tiny_model_dir, projection_dim=8, normalize=True), temperature=0.1,
                    dual_weight=0.5, grad_cache_chunk_size=chunk, optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        dm = RetrievalDataModule(str(tiny_beir), tokenizer=tiny_model_dir, cache_dir=cache_dir, train_batch_size=4,
                                 num_negatives=1, num_negative_queries=2, negatives="none", show_progress=False)
        record = RecordGradNorm()
        L.Trainer(max_steps=2, accumulate_grad_batches=2, gradient_clip_val=0.05, limit_val_batches=0, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  num_sanity_val_steps=0, default_root_dir=str(tmp_path),
                  callbacks=[record]).fit(model, dm)
        assert model.global_step == 2
        weights.append(model.state_dict())
        norms.append(torch.stack(record.norms))
    torch.testing.assert_close(norms[1], norms[0], atol=1e-5, rtol=1e-5)  # the accumulated gradient, unclipped
    assert (norms[0] > 0.05).all()  # so clipping acted on every step
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], atol=1e-5, rtol=1e-5, msg=name)
    assert (weights[0]["encoder.projection.0.weight"] - initial["encoder.projection.0.weight"]).abs().max() > 1e-3


# -- 2 processes over gloo ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ddp_inputs(tiny_model_dir, tmp_path_factory):
    """A tiny BERT without dropout (2 processes draw other masks than 1) and a data set where q0..q3 are also
    relevant to d16..d19, the positives of q16..q19: in-batch false negatives across the two processes; q0 judged
    d17..d19 non-relevant (grade 0): not masked by default (`exclude_from_negatives="positives"`)."""
    root = tmp_path_factory.mktemp("ddp")
    model = Path(shutil.copytree(tiny_model_dir, root / "model"))
    config = json.loads((model / "config.json").read_text())
    config["hidden_dropout_prob"] = config["attention_probs_dropout_prob"] = 0.0
    (model / "config.json").write_text(json.dumps(config))
    data = write_beir(root / "data", dev=True)
    with open(data / "qrels" / "train.tsv", "a") as f:
        f.write("".join(f"q{i}\td{i + 16}\t1\n" for i in range(4)))
        f.write("".join(f"q0\td{i}\t0\n" for i in (17, 18, 19)))
    return str(model), str(data), str(root / "cache")


def probe(world: int, inputs, out: Path, *cases: str) -> None:
    """Run `large_batch_probe.py` as `world` processes (torchrun's variables; Lightning launches nothing)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = {**os.environ, "PYTHONPATH": str(TESTS.parent), "OMP_NUM_THREADS": "1"}
        if world > 1:
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                       LOCAL_RANK=str(rank), NODE_RANK="0")
        procs.append(subprocess.Popen([sys.executable, str(TESTS / "large_batch_probe.py"), *inputs, str(out),
                                       "q0,q1,q2,q3,q16,q17,q18,q19", *cases], env=env, text=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]


def test_two_processes_share_negatives_like_one_process_on_the_whole_batch(ddp_inputs, tmp_path):
    objectives = ["bm25neg", "samtone", "dance"]
    probe(1, ddp_inputs, tmp_path, *objectives)  # first: builds the token cache
    probe(2, ddp_inputs, tmp_path, *objectives, *(f"{o}_cached" for o in objectives), "bm25neg_local")

    def load(case, world, rank):
        return torch.load(tmp_path / f"{case}-w{world}-r{rank}.pt")

    for objective in objectives:
        one = load(objective, 1, 0)
        for case in (objective, f"{objective}_cached"):
            for rank in (0, 1):
                two = load(case, 2, rank)
                assert_same_grads(two["grads"], one["grads"])
                # The loss saw the concatenated batch, false-negative mask included.
                for key in ("query_rows", "doc_rows", "judged"):
                    assert torch.equal(two[key], one[key]), (case, key)
    judged = load("bm25neg", 1, 0)["judged"]  # (8, 16): rank 0's queries, rank 1's documents and the reverse
    assert judged[:4, 8:].any() and judged[4:, :8].any()
    doc_rows = load("bm25neg", 1, 0)["doc_rows"]  # corpus row r is d{r}: write_beir's order
    grade_0 = torch.isin(doc_rows, torch.tensor([17, 18, 19]))
    assert grade_0.sum() >= 3 and not judged[0, grade_0].any()  # q0's judged non-relevant documents
    # Without sharing, each process's loss covers its own half: another gradient (the comparison can fail).
    local = load("bm25neg_local", 2, 0)["grads"]
    one = load("bm25neg", 1, 0)["grads"]
    assert max((local[n] - one[n]).abs().max() for n in one) > 1e-3
