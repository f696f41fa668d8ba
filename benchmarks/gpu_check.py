"""End-to-end check of every objective on the GPU(s): fit with a negative refresh and a validation, then test and
predict from the last checkpoint, each as its own `python -m lit_dr` process under DDP.

    python benchmarks/gpu_check.py                       # all GPUs, tiny synthetic data and a tiny BERT
    python benchmarks/gpu_check.py --devices 1 --objectives bm25neg ance
    python benchmarks/gpu_check.py --data ../shared/data/scifact --model sentence-transformers/all-MiniLM-L6-v2
    python benchmarks/gpu_check.py --cpu                 # no GPU: 2 CPU processes, DDP over gloo, fp32

For each objective (bm25neg, samtone, ance, dance_stage1, dance, and ltre once `configs/ltre.yaml` exists) it runs
`lit_dr fit --config configs/<objective>.yaml --config configs/trainer/gpu.yaml --config configs/logger/csv.yaml`
plus a fragment written here that keeps the config's callbacks but makes `NegativeRefresh` mine every 2 steps (the
objectives without one get one, after their first 2 steps; not ltre, whose corpus is encoded once, at the start
of its fit, into a fixed index searched at every step), for 4 optimizer steps in epochs of 2 batches with a validation after each; then `lit_dr test` and
`lit_dr predict` with `--ckpt_path <last.ckpt>`, under the same configs. ance, dance_stage1, dance and ltre
warm-start from the bm25neg run's last checkpoint, as the papers do. Results are read from the files the runs
write (CSV `metrics.csv`, `last.ckpt`, `runs/predict-step*.trec`), one line per objective: steps, refreshes, the
last val nDCG@10, test nDCG@10, lines of the predict run file, warm or cold start, wall seconds of the three
commands. A failure prints the tail of that process's stderr and the check goes on; exit status 1 if any failed.

The bugs this guards against showed only on CUDA under NCCL, after training, at the first corpus encoding (a bf16
autocast context reused per batch; torchmetrics syncing CPU tensors): hence every command and a refresh for all.

By default it writes its own data (`lit_dr.data.synthetic.write_beir`: 256 documents, 96 queries or 48 per process if
more, a dev split carved from training, 4 test queries) and model (`build_tiny_bert`, trained at lr 3e-3 so that
4 steps show in the metrics) into a work directory, so it needs no network. `--data DIR` (a BEIR folder; without
`qrels/test.tsv`, as our SciFact, `validate` stands in for `test`), `--model DIR` and `--max-length` (document
tokens) use real ones at the configs' settings. The work directory (`--workdir`, else a temporary one) is
removed when everything passed and no `--workdir` was given, kept otherwise.

On a GPU machine without network, from the repository root, with a Python that has torch+CUDA, lightning,
transformers and torchmetrics, and the project's other dependencies carried as cp312 wheels in the git-ignored
`.whl/` (made on a machine with a registry; the import preflight names any that is missing):

    pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
        --platform manylinux2014_x86_64 -d .whl faiss-cpu jsonargparse docstring-parser typeshed-client bm25s PyStemmer
    pip install --no-index --no-deps --target ~/site .whl/*.whl
    PYTHONPATH=~/site:. python benchmarks/gpu_check.py               # --devices N: N GPUs (default all)

`--cpu` runs the same commands on a machine without a GPU (and in our tests): gpu.yaml is still stacked, then
overridden with `--trainer.accelerator=cpu --trainer.devices=2 --trainer.precision=32-true`, so its DDPStrategy
runs 2 processes over gloo (one thread each).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ("bm25neg", "samtone", "ance", "dance_stage1", "dance", "ltre")
WARM_STARTED = ("ance", "dance_stage1", "dance", "ltre")
FIXED_INDEX = ("ltre",)  # the corpus is encoded once, at the start of the fit: nothing to refresh
REFRESH = "lit_dr.training.NegativeRefresh"
STDERR_LINES = 40


@dataclass
class Outcome:
    objective: str
    problems: list[str] = field(default_factory=list)
    stderr: Path | None = None  # of the command behind the first problem
    steps: int | None = None
    refreshes: int | None = None  # None: the objective does not refresh
    val: float | None = None
    test: float | None = None
    test_split: str = "test"
    predict_lines: int = 0
    warm_start: bool = False
    seconds: float = 0.0
    last_ckpt: Path | None = None


# -- the environment -------------------------------------------------------------------------------------------
def header(cpu: bool) -> str:
    import torch

    from lit_dr.index.search import search_backend

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        names = sorted({torch.cuda.get_device_name(i) for i in range(n)})
        gpus = f"CUDA {torch.version.cuda}, {n} x {', '.join(names)}"
    else:
        gpus = "no CUDA device"
    try:
        import faiss

        gpu_faiss = hasattr(faiss, "StandardGpuResources")
        faiss_line = f"faiss {faiss.__version__} ({'GPU build, ' + str(faiss.get_num_gpus()) + ' GPUs' if gpu_faiss else 'CPU only'})"
    except ImportError as e:
        faiss_line = f"faiss not importable ({e})"
    device = torch.device("cpu" if cpu else "cuda", None if cpu else 0)
    return (f"torch {torch.__version__}; {gpus}; {faiss_line}; "
            f"search_backend('Flat', {device}) = {search_backend('Flat', device)!r}")


def subprocess_env(cpu: bool, cache: Path) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "LIT_DR_CACHE": str(cache), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                 os.environ.get("PYTHONPATH")]))}
    if cpu:  # 2 processes on a small machine: one thread each rather than both fighting over every core
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


# -- before anything: every wheel the runs import -------------------------------------------------------------
PREFLIGHT = {  # module -> the wheel that provides it
    "torch": "torch", "lightning": "lightning", "transformers": "transformers", "torchmetrics": "torchmetrics",
    "numpy": "numpy", "yaml": "PyYAML", "tqdm": "tqdm", "filelock": "filelock", "faiss": "faiss-cpu (or faiss-gpu)",
    "jsonargparse": "jsonargparse", "docstring_parser": "docstring-parser", "typeshed_client": "typeshed-client",
    "bm25s": "bm25s", "Stemmer": "PyStemmer",
}


def preflight() -> list[str]:
    """'module (wheel: error)' for each module of PREFLIGHT that does not import; imported, not just found, so a
    wheel built for another Python or platform is named too."""
    import importlib

    missing = []
    for module, wheel in PREFLIGHT.items():
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 (ImportError, or an OSError from a shared library)
            missing.append(f"{module} (wheel {wheel}: {type(err).__name__}: {err})")
    return missing


# -- what is run -----------------------------------------------------------------------------------------------
def callbacks_fragment(objective: str, every_n_steps: int, path: Path) -> bool:
    """Write the config's own callbacks to `path`, with `NegativeRefresh` mining every `every_n_steps` (one added,
    starting from the initial negatives, unless the config has one or the objective's index is fixed). Returns
    whether the fit will refresh. A later config's `trainer.callbacks` replaces the earlier list, so the fragment
    carries all of them; the checkpoints (`last.ckpt` included) are the CLI's `best_checkpoint`/`last_checkpoint`."""
    config = yaml.safe_load((ROOT / "configs" / f"{objective}.yaml").read_text())
    callbacks = [dict(c) for c in (config.get("trainer") or {}).get("callbacks") or []]
    refreshes = [c for c in callbacks if c["class_path"].endswith("NegativeRefresh")]
    if not refreshes and objective not in FIXED_INDEX:
        refreshes = [{"class_path": REFRESH, "init_args": {"before_first_step": False}}]
        callbacks.append(refreshes[0])
    for c in refreshes:
        c["init_args"] = {**c.get("init_args", {}), "every_n_steps": every_n_steps}
    # The checkpoints are the CLI's own keys, not in this list: the one writing last.ckpt must be there.
    defaults = yaml.safe_load((ROOT / "lit_dr" / "commands" / "defaults.yaml").read_text())
    if not ((defaults.get("last_checkpoint") or {}).get("init_args") or {}).get("save_last"):
        raise ValueError("lit_dr/commands/defaults.yaml has no last_checkpoint writing last.ckpt")
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}, sort_keys=False))
    return bool(refreshes)


def command(stage: str, objective: str, fragment: Path, overrides: list[str], logs: Path) -> list[str]:
    return [
        sys.executable, "-m", "lit_dr", stage,
        "--config", str(ROOT / "configs" / f"{objective}.yaml"),
        "--config", str(ROOT / "configs" / "trainer" / "gpu.yaml"),
        "--config", str(ROOT / "configs" / "logger" / "csv.yaml"),
        "--config", str(fragment),
        *overrides,
        f"--trainer.logger.init_args.save_dir={logs}",
        f"--trainer.logger.init_args.version={stage}",  # run directory: <logs>/lit-dr/<stage>
    ]


def run(cmd: list[str], env: dict[str, str], out: Path, timeout_s: float) -> tuple[int, Path]:
    """Run one command (its own process group, so a timeout ends every DDP rank); returns (status, stderr file)."""
    stderr = out.with_suffix(".stderr")
    with open(out.with_suffix(".stdout"), "w") as o, open(stderr, "w") as e:
        o.write(" ".join(cmd) + "\n\n")
        o.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=o, stderr=e, start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s), stderr
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            e.write(f"\n[gpu_check] killed after {timeout_s:.0f} s\n")
            return -signal.SIGKILL, stderr


# -- what is read back -----------------------------------------------------------------------------------------
def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def last_value(rows: list[dict[str, str]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    return values[-1] if values else None


def count_lines(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            total += sum(1 for _ in f)
    return total


def check(objective: str, args, work: Path, env: dict[str, str], common: list[str], warm_start: Path | None,
          test_stage: str) -> Outcome:
    import torch

    outcome = Outcome(objective, test_split="test" if test_stage == "test" else "dev")
    logs = work / "runs" / objective
    fragment = work / f"{objective}-callbacks.yaml"
    refreshing = callbacks_fragment(objective, args.refresh_every, fragment)
    overrides = list(common)
    if args.large_batch and objective != "ltre":  # LTRe refuses both (its own training_step)
        overrides += ["--model.init_args.cross_device_negatives=true", "--model.init_args.grad_cache_chunk_size=4"]
    if warm_start is not None:
        overrides.append(f"--model.init_args.init_checkpoint={warm_start}")
        outcome.warm_start = True
    start = time.perf_counter()
    stderr: dict[str, Path] = {}

    def problem(stage: str, message: str) -> None:
        outcome.problems.append(f"{stage}: {message}")
        outcome.stderr = outcome.stderr or stderr[stage]

    def step(stage: str) -> bool:
        status, stderr[stage] = run(command(stage, objective, fragment, overrides, logs), env,
                                    work / "logs" / f"{objective}-{stage}", args.timeout)
        if status != 0:
            problem(stage, f"`python -m lit_dr {stage}` exited with status {status}")
        return status == 0

    try:
        if not step("fit"):
            return outcome
        fit_dir = logs / "lit-dr" / "fit"
        rows = metric_rows(fit_dir)
        if refreshing:
            outcome.refreshes = len({r["refresh/generation"] for r in rows if r.get("refresh/generation")})
        outcome.val = last_value(rows, "val/ndcg@10")
        loss = last_value(rows, "train/loss")
        last = fit_dir / "checkpoints" / "last.ckpt"
        if last.exists():
            outcome.last_ckpt = last
            outcome.steps = int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])
        if outcome.steps != args.max_steps:
            problem("fit", f"expected {last} at step {args.max_steps}, found step {outcome.steps}")
        if outcome.refreshes == 0:
            problem("fit", f"no refresh/* rows in {fit_dir / 'metrics.csv'}")
        if outcome.val is None or not math.isfinite(outcome.val):
            problem("fit", f"no val/ndcg@10 in {fit_dir / 'metrics.csv'}")
        if loss is None or not math.isfinite(loss):
            problem("fit", f"last train/loss in {fit_dir / 'metrics.csv'} is {loss}")
        if outcome.last_ckpt is None:
            return outcome
        overrides.append(f"--ckpt_path={last}")

        if step(test_stage):
            prefix = "test" if test_stage == "test" else "val"
            outcome.test = last_value(metric_rows(logs / "lit-dr" / test_stage), f"{prefix}/ndcg@10")
            if outcome.test is None or not math.isfinite(outcome.test):
                problem(test_stage, f"no {prefix}/ndcg@10 in {logs / 'lit-dr' / test_stage / 'metrics.csv'}")
        if step("predict"):
            run_files = sorted((logs / "lit-dr" / "predict" / "runs").glob("predict-step*.trec"))
            outcome.predict_lines = count_lines(run_files)
            if outcome.predict_lines == 0:
                problem("predict", f"no lines in {logs / 'lit-dr/predict/runs/predict-step*.trec'}")
        return outcome
    finally:
        outcome.seconds = time.perf_counter() - start


# -- numeric checks: figures a GPU run can get wrong, each printed with PASS/FAIL -------------------------------
@dataclass
class Check:
    name: str
    passed: bool
    figure: str


def print_check(c: Check) -> None:
    print(f"check {c.name:<34} {'PASS' if c.passed else 'FAIL'}  {c.figure}", flush=True)


def random_shards(directory: Path, docs, world_size: int):
    """`docs` (N, H) float32 written as `world_size` shards, as a corpus encoding by that many processes leaves it."""
    import numpy as np

    from lit_dr.index.embeddings import (
        EmbeddingShards,
        finish_shard,
        open_shard_for_writing,
        shard_path,
        write_meta,
    )

    bounds = np.linspace(0, len(docs), world_size + 1).astype(np.int64)
    for r in range(world_size):
        path = shard_path(directory, r, world_size)
        out, tmp = open_shard_for_writing(path, int(bounds[r + 1] - bounds[r]), docs.shape[1], "float32")
        out[:] = docs[bounds[r]: bounds[r + 1]]
        finish_shard(out, tmp, path)
    write_meta(directory, bounds, docs.shape[1], "float32")
    return EmbeddingShards(directory)


def check_grad_cache(device, bf16: bool, data: Path, model: str, cache: Path) -> Check:
    """1. One training step's gradient with gradient caching (chunks of 3) against the uncached step that embeds
    the same chunks with a graph (so dropout draws the same masks: `tests/test_large_batch.py`), under bf16
    autocast on CUDA. Figure: max |g_cached - g| / max |g| over all parameters. bf16 keeps 8 mantissa bits
    (relative rounding 2^-9 = 0.002 per operation); both steps run the same bf16 kernels on the same chunks and
    differ only in the order of float32 gradient accumulation, so 2e-2 (10 roundings) is generous yet far below
    the O(1) error of a wrong random-state replay or a chunk embedded without autocast. float32 (CPU): 1e-4."""
    import torch

    from lit_dr import BM25Negatives, Encoder, RetrievalDataModule
    from lit_dr.data.batches import TokenBatch

    chunk, tolerance = 3, (2e-2 if bf16 else 1e-4)
    dm = RetrievalDataModule(str(data), tokenizer=model, cache_dir=str(cache), num_negatives=2, negatives="none",
                             show_progress=False)
    dm.setup("fit")
    batch = dm.train_batch(dm.split_rows["train"][:5]).to(device)  # B 5, G 3: chunks of 3 split groups unevenly

    class Chunked(BM25Negatives):  # the uncached reference: each tower embeds `chunk` rows at a time, with a graph
        def encode_queries(self, t):
            return torch.cat([super(Chunked, self).encode_queries(TokenBatch(t.input_ids[i:i + chunk],
                              t.attention_mask[i:i + chunk])) for i in range(0, len(t.input_ids), chunk)])

        def encode_docs(self, t):
            return torch.cat([super(Chunked, self).encode_docs(TokenBatch(t.input_ids[i:i + chunk],
                              t.attention_mask[i:i + chunk])) for i in range(0, len(t.input_ids), chunk)])

    torch.manual_seed(0)
    reference = Chunked(encoder=Encoder(model, projection_dim=8, normalize=True), temperature=0.1).to(device)
    cached = BM25Negatives(optimizer=torch.optim.AdamW, encoder=Encoder(model, projection_dim=8, normalize=True), temperature=0.1,
                           grad_cache_chunk_size=chunk).to(device)
    cached.load_state_dict(reference.state_dict())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step(module):
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.manual_seed_all(0)
        with autocast:
            objective = module.training_step(batch, 0)
        objective.backward()
        return torch.cat([p.grad.float().reshape(-1) for p in module.parameters() if p.grad is not None])

    expected, got = step(reference), step(cached)
    if got.shape != expected.shape:
        return Check("grad cache vs uncached", False, f"{got.numel()} gradient entries against {expected.numel()}")
    rel = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-30))
    precision = "bf16 autocast" if bf16 else "float32"
    return Check("grad cache vs uncached", rel <= tolerance and math.isfinite(rel),
                 f"max rel diff {rel:.2e} (tolerance {tolerance:g}, {precision}, {device.type}, {got.numel()} grads)")


def check_autocast_search(device, work: Path) -> list[Check]:
    """2. LTRe's retrieval inside `torch.autocast(bfloat16)` (as under a bf16-mixed trainer: `no_grad` does not
    turn autocast off) must return what float32 search returns: same rows, scores within float32 rounding. Both
    `FixedIndex(resident=True)` (LTRe's training-time index on the device) and `CorpusIndex.search` (evaluation's)."""
    import numpy as np
    import torch

    from lit_dr.index.corpus_index import CorpusIndex
    from lit_dr.index.search import FixedIndex, Processes

    rng = np.random.default_rng(1)
    docs = rng.standard_normal((2000, 64), dtype=np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)  # cosine scores: many close, as a fine-tuned model's
    queries = rng.standard_normal((32, 64), dtype=np.float32)
    shards = random_shards(work / "autocast-shards", docs, 2)
    procs = Processes(device=device)
    fixed = FixedIndex(shards, "Flat", procs, resident=True)
    searches = {"FixedIndex(resident) under autocast": lambda: fixed.search(queries, 200),
                "CorpusIndex.search under autocast": lambda: CorpusIndex.open(shards.directory, procs).search(queries, 200, "Flat", share=False)}
    checks = []
    for name, search in searches.items():
        d32, i32 = search()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            d16, i16 = search()
        same_rows = float((i16 == i32).mean())
        worst = float(np.abs(d16.astype(np.float64) - d32).max())
        ok = same_rows == 1.0 and worst <= 1e-5
        checks.append(Check(name, ok, f"rows identical {same_rows:.1%}, max score diff {worst:.1e} "
                                      f"(float32 tolerance 1e-5; {device.type})"))
    return checks


def check_torch_vs_faiss_stream(device, work: Path) -> Check:
    """3. Exact search streamed over the same shards by torch on `device` and by FAISS on the CPU: the same rows up
    to ties (each side's rows rescored exactly, in float64, give the same sorted scores) and scores within 1e-4
    (float32 dot products of 64 terms summed in another order; a TF32 matmul would differ by ~1e-3)."""
    import numpy as np

    from lit_dr.index.search import exact_search_stream

    rng = np.random.default_rng(2)
    docs = rng.standard_normal((20_000, 64), dtype=np.float32)
    queries = rng.standard_normal((256, 64), dtype=np.float32)
    shards = random_shards(work / "stream-shards", docs, 3)
    dt, it = exact_search_stream(shards, queries, 100, backend="torch", device=device, block_rows=4096)
    df, i_f = exact_search_stream(shards, queries, 100, backend="faiss", block_rows=4096)
    exact = queries.astype(np.float64) @ docs.astype(np.float64).T  # (Q, N)
    rescored_t, rescored_f = np.take_along_axis(exact, it, 1), np.take_along_axis(exact, i_f, 1)
    rows_equal = float((it == i_f).mean())
    score_diff = float(np.abs(dt.astype(np.float64) - df).max())
    tie_diff = float(np.abs(rescored_t - rescored_f).max())
    ok = (it >= 0).all() and score_diff <= 1e-4 and tie_diff <= 1e-4
    return Check("torch stream vs FAISS", bool(ok), f"rows identical {rows_equal:.2%}, max score diff "
                 f"{score_diff:.1e}, rows' exact scores differ by {tie_diff:.1e} (tolerance 1e-4; torch on {device})")


FACTORY_RECALL = {"Flat": 0.999, "IVF{n},Flat": 0.999, "IVF{n},PQ64": 0.70, "HNSW32": 0.90}


def check_factories(device, n_docs: int) -> list[Check]:
    """4. Each advertised factory string where `search_backend` puts it: on a GPU build of FAISS when the library
    says the GPU supports it (`faiss_index.gpu_supported`, float16 lookup tables for PQ in `to_gpu`), else on the
    CPU. Figure: recall@10 against exact search at full nprobe (= nlist) or efSearch 256. Bounds: exact for Flat
    and IVF at nprobe = nlist; for PQ64 (2 dimensions per 8-bit code on Gaussian vectors, the worst case for PQ)
    0.70, measured 0.847 on the CPU at 20,000 documents (float16 lookup tables on the GPU should lose little);
    HNSW32 0.90 (0.969 measured)."""
    import numpy as np
    import torch

    from lit_dr.index import faiss_index
    from lit_dr.index.search import search_backend

    faiss = faiss_index.import_faiss()
    gpu_supported = getattr(faiss_index, "gpu_supported", None)
    gpu_build = hasattr(faiss, "StandardGpuResources")
    rng = np.random.default_rng(3)
    docs = rng.standard_normal((n_docs, 128), dtype=np.float32)
    queries = rng.standard_normal((200, 128), dtype=np.float32)
    _, truth = faiss_index.exact_search(torch.from_numpy(docs), torch.from_numpy(queries), 10)
    truth = truth.numpy()
    nlist = 64
    checks = []
    if gpu_supported is None:
        print("check factories: lit_dr.index.faiss_index.gpu_supported not available (not merged yet): the decision is "
              "search_backend's alone", flush=True)
    for template, bound in FACTORY_RECALL.items():
        factory = template.format(n=nlist)
        try:
            index = faiss_index.build_index(docs, factory, train_sample=10_000)  # 39 x 256 PQ centroids
            params = {"nprobe": nlist} if "IVF" in factory else {"efSearch": 256} if "HNSW" in factory else None
            backend = search_backend(factory, device)
            supported = gpu_build and device.type == "cuda" and (gpu_supported(factory) if gpu_supported else True)
            where, problem = "cpu", ""
            if backend == "faiss-gpu":
                if gpu_supported is not None and not gpu_supported(factory):
                    problem = f"search_backend sent {factory} to the GPU, gpu_supported says no; "
                index, where = faiss_index.to_gpu(index, device.index or 0), f"gpu {device.index or 0}"
            elif supported and gpu_supported is not None:
                problem = f"gpu_supported({factory!r}) but search_backend chose {backend!r}; "
            _, got = faiss_index.search(index, queries, 10, params=params)
            recall = float(np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth, strict=True)]))
            ok = not problem and recall >= bound
            checks.append(Check(f"factory {factory}", ok, f"{problem}recall@10 {recall:.3f} (bound {bound}) on "
                                f"{where}, backend {backend!r}, params {params}"))
        except Exception as err:  # noqa: BLE001 (a failed placement is the finding: report it, go on)
            checks.append(Check(f"factory {factory}", False, f"{type(err).__name__}: {str(err).splitlines()[0]}"))
    return checks


def numeric_checks(cpu: bool, work: Path, data: Path, model: str, factory_docs: int) -> list[Check]:
    import torch

    device = torch.device("cpu") if cpu else torch.device("cuda", 0)
    checks: list[Check] = []

    def add(found) -> None:
        for c in found if isinstance(found, list) else [found]:
            print_check(c)
            checks.append(c)

    add(check_grad_cache(device, not cpu, data, model, work / "cache"))
    add(check_autocast_search(device, work))
    add(check_torch_vs_faiss_stream(device, work))
    if factory_docs > 0:  # 0: skipped (IVF-PQ64 training takes minutes on a loaded 2-core CPU)
        add(check_factories(device, factory_docs))
    return checks


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(o: Outcome) -> str:
    test = fmt(o.test, ".4f") + ("" if o.test_split == "test" else " (dev)")
    return (f"{o.objective:<13} {'FAIL' if o.problems else 'OK':<4}  steps {fmt(o.steps, 'd'):>3}  "
            f"refreshes {fmt(o.refreshes, 'd')}  val nDCG@10 {fmt(o.val, '.4f'):>6}  test nDCG@10 {test:>6}  "
            f"predict lines {o.predict_lines:>6}  {'warm' if o.warm_start else 'cold'}  {o.seconds:6.1f} s")


def tail(path: Path | None, n: int) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="2 CPU processes, DDP over gloo, fp32")
    parser.add_argument("--devices", type=int, default=-1, help="GPUs (default -1: all); ignored with --cpu")
    parser.add_argument("--objectives", nargs="+", default=None,
                        help=f"subset of {', '.join(OBJECTIVES)} (space- or comma-separated); default all")
    parser.add_argument("--data", type=Path, default=None, help="a BEIR folder instead of the synthetic set")
    parser.add_argument("--model", default=None, help="a model directory (or packaged name) instead of the tiny BERT")
    parser.add_argument("--max-length", type=int, default=None, help="document tokens (default: the config's)")
    parser.add_argument("--docs", type=int, default=256, help="synthetic documents (at least --queries)")
    parser.add_argument("--queries", type=int, default=96,
                        help="synthetic queries, raised to 48 per process so each gets 2 batches of 16")
    parser.add_argument("--max-steps", type=int, default=4, help="optimizer steps per fit, even (epochs of 2 batches)")
    parser.add_argument("--refresh-every", type=int, default=2, help="NegativeRefresh every_n_steps")
    parser.add_argument("--large-batch", action="store_true",
                        help="also shared negatives across processes and gradient caching (chunks of 4) in every "
                             "objective but ltre: CUDA random-state replay, autocast and NCCL gathers")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per command")
    parser.add_argument("--workdir", type=Path, default=None, help="where everything goes (kept); default a temp dir")
    parser.add_argument("--checks", choices=("all", "numeric", "objectives"), default="all",
                        help="numeric: only the numeric checks (seconds); objectives: only the fits; default both")
    parser.add_argument("--factory-docs", type=int, default=20_000,
                        help="synthetic vectors (128 dimensions) the factory check indexes; 0 skips that check")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    missing = preflight()
    if missing:
        print("preflight FAIL: missing or broken wheels: " + "; ".join(missing), flush=True)
        print("install them (see this script's docstring): pip install --no-index --no-deps --target ~/site "
              ".whl/*.whl, then PYTHONPATH=~/site:.", flush=True)
        return 2
    print(f"preflight PASS: {', '.join(PREFLIGHT)} import", flush=True)

    available = [o for o in OBJECTIVES if (ROOT / "configs" / f"{o}.yaml").exists()]
    chosen = available
    if args.objectives:
        names = [n for item in args.objectives for n in item.split(",") if n]
        unknown = [n for n in names if n not in available]
        if unknown:
            parser.error(f"unknown objectives {unknown}; available: {available}")
        chosen = [o for o in available if o in names]

    if args.max_steps < 2 or args.max_steps % 2:  # a fit ending mid-epoch would not validate at its last step
        parser.error("--max-steps must be even (epochs of 2 batches, a validation after each)")
    if args.data is not None and not (args.data / "corpus.jsonl").exists():
        parser.error(f"--data {args.data}: not a BEIR folder (no corpus.jsonl)")
    import torch

    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device visible to torch: use --cpu to run the check on CPU processes")
    world = 2 if args.cpu else (torch.cuda.device_count() if args.devices == -1 else args.devices)
    print(header(args.cpu), flush=True)

    work = Path(tempfile.mkdtemp(prefix="lit-dr-gpu-check-")) if args.workdir is None else args.workdir.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    env = subprocess_env(args.cpu, work / "cache")
    if args.data is None:
        from lit_dr.data.synthetic import write_beir

        n_queries = max(args.queries, 48 * world)
        data = write_beir(work / "data", n_docs=max(args.docs, n_queries), n_queries=n_queries, test=True)
    else:
        data = args.data.resolve()
    if args.model is None:
        from transformers.utils.logging import disable_progress_bar

        from lit_dr.data.synthetic import build_tiny_bert

        disable_progress_bar()
        model = build_tiny_bert(work / "tiny-bert")
    else:
        model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    test_stage = "test" if (data / "qrels" / "test.tsv").exists() else "validate"

    common = [
        f"--data.dataset={data}",
        f"--data.cache_dir={work / 'cache'}",
        "--data.show_progress=false",
        f"--model.init_args.encoder.init_args.model_name_or_path={model}",  # the data module's tokenizer follows
        f"--trainer.max_steps={args.max_steps}",
        "--trainer.max_epochs=-1",  # the step budget ends the fit (a refresh at an epoch end must still happen)
        "--trainer.limit_train_batches=2",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    if args.model is None:  # at the configs' rates (1e-5, 2e-5) 4 steps leave the tiny BERT's rankings as they were
        common.append("--model.init_args.optimizer.init_args.lr=3e-3")
    if args.max_length is not None:
        common.append(f"--data.doc_max_length={args.max_length}")
    if args.cpu:
        common += ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.precision=32-true"]
    else:
        common.append(f"--trainer.devices={args.devices}")
    print(f"data {data} ({test_stage} after fit); model {model}; {world} processes; work dir {work}", flush=True)

    if args.checks != "objectives":
        checks = numeric_checks(args.cpu, work, data, model, args.factory_docs)
        failed_checks = [c.name for c in checks if not c.passed]
        print(f"numeric checks: {len(checks) - len(failed_checks)} of {len(checks)} PASS"
              + (f"; FAILED: {', '.join(failed_checks)}" if failed_checks else ""), flush=True)
        if args.checks == "numeric":
            if not failed_checks and args.workdir is None:
                shutil.rmtree(work, ignore_errors=True)
            return 1 if failed_checks else 0
    else:
        failed_checks = []

    outcomes, warm_start = [], None
    for objective in ([] if args.checks == "numeric" else chosen):
        use = warm_start if objective in WARM_STARTED else None
        outcome = check(objective, args, work, env, common, use, test_stage)
        outcomes.append(outcome)
        print(report(outcome), flush=True)
        if outcome.problems:
            for problem in outcome.problems:
                print(f"    {problem}")
            print(f"    last {STDERR_LINES} lines of {outcome.stderr}:")
            print("\n".join("    | " + line for line in tail(outcome.stderr, STDERR_LINES).splitlines()), flush=True)
        if objective == "bm25neg" and not outcome.problems:
            warm_start = outcome.last_ckpt

    failed = [o.objective for o in outcomes if o.problems] + failed_checks
    if failed:
        print(f"FAILED: {', '.join(failed)}; logs kept in {work}")
        return 1
    print(f"all {len(outcomes)} objectives OK")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
