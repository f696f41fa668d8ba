"""Searching embeddings on disk (`EmbeddingShards`) for the queries of every process of a job.

Each process searches the whole corpus for its own share of the queries, and the (Q, k) results are gathered,
so every process ends with the same ranking, identical to a single process's (each query is searched the same
way whatever the number of processes). The corpus is never held whole in memory:

- exact search ("Flat") streams over the memory-mapped shards in blocks, keeping a running top-k: FAISS on the
  CPU, torch (blocked matmul + top-k) on a GPU, so no GPU build of FAISS is needed for it;
- other factory strings ("IVF4096,PQ64", "HNSW32") build one index, once: process 0 builds it from the blocks and
  writes it beside the embeddings, every process reads it (onto its own GPU when FAISS has a GPU build and
  implements that index: `faiss_index.gpu_supported`) and searches it with the caller's search parameters
  ({"nprobe": 64}, {"efSearch": 128}; FAISS's defaults, nprobe 1, otherwise).

Every search ranks in float32 with autocast off, whatever the trainer's precision. A search that returns fewer
than k results for some queries (an IVF at a low nprobe, HNSW) says so in one counted warning per call.

`search_backend` is the one place that decides what runs where, for evaluation, refresh and LTRe alike.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lit_dr.index.embeddings import EmbeddingShards
from lit_dr.index.faiss_index import (
    build_index,
    exact_search,
    gpu_supported,
    import_faiss,
    search,
    set_search_params,
    to_gpu,
)

log = logging.getLogger(__name__)

Backend = Literal["faiss", "faiss-gpu", "torch"]
BLOCK_ROWS = 65_536  # corpus rows per streamed block: 192 MiB at 768 float32 dimensions
_warned: set[str] = set()


@dataclass
class Processes:
    """This process's place in a job: its rank, the job's size, its device and the job's collectives.

    `all_gather` maps a (n, ...) tensor to (world_size, n, ...) (same n on every process), on the device the
    backend needs (NCCL: the GPU); `barrier` waits for every process.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    all_gather: Callable[[Tensor], Tensor] | None = None
    barrier: Callable[[], None] | None = None


def is_exact(factory: str) -> bool:
    return factory.replace(" ", "") == "Flat"


def search_backend(factory: str, device: torch.device) -> Backend:
    """Where search runs: on the CPU with FAISS, unless the model runs on a GPU. There exact search uses torch
    (no FAISS GPU build needed) and other indexes use FAISS's GPU build when it implements them
    (`faiss_index.gpu_supported`: not HNSW), else the CPU (logged once per factory)."""
    if torch.device(device).type != "cuda":
        return "faiss"
    if is_exact(factory):
        return "torch"
    if not gpu_supported(factory):
        reason = "FAISS's GPU build does not implement it"
    elif hasattr(import_faiss(), "StandardGpuResources"):
        return "faiss-gpu"
    else:
        reason = "no GPU build of FAISS installed (pip install 'lit-dr[gpu]')"
    if factory not in _warned:
        _warned.add(factory)
        log.warning("index %r is searched on the CPU: %s", factory, reason)
    return "faiss"


def warn_short_results(ids: np.ndarray, k: int, what: str = "search") -> int:
    """Count the queries of (Q, k) result rows `ids` with empty slots (-1) and say so in one warning: an
    approximate index probed too little returns fewer than k documents, and what is missing is never mined or
    evaluated. Returns that count. k must already be at most the corpus size (exact search then never warns)."""
    filled = (ids >= 0).sum(axis=1)  # (Q,)
    short = int((filled < k).sum())
    if short:
        log.warning("%s: %d of %d queries got fewer than k=%d results (mean %.1f); raise nprobe/efSearch",
                    what, short, len(ids), k, float(filled.mean()))
    return short


def even_share(n: int, rank: int, world_size: int) -> slice:
    """This process's contiguous share of n items, sizes differing by at most one."""
    bounds = np.linspace(0, n, world_size + 1).round().astype(int)
    return slice(int(bounds[rank]), int(bounds[rank + 1]))


def exact_search_stream(
    embeddings: EmbeddingShards,
    queries: np.ndarray,
    k: int,
    backend: Literal["faiss", "torch"] = "faiss",
    device: torch.device | str = "cpu",
    block_rows: int = BLOCK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k over every row of `embeddings`, streamed in blocks with a running top-k.

    Args:
        queries: (Q, H) float32.
    Returns:
        (D, I): (Q, k) float32 scores and int64 rows, best first; empty slots (k > N) are -inf / -1.
    Memory: one block (block_rows x H float32) plus the (Q, k) results; the blocks of the memory map are file
    pages, not process memory.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if backend == "torch":
        return _torch_stream(embeddings, queries, k, torch.device(device), block_rows)
    faiss = import_faiss()
    heap, result = None, None
    for first, block in embeddings.blocks(block_rows):
        index = faiss.IndexFlatIP(embeddings.dim)
        index.add(block)
        d, i = search(index, queries, k)  # (Q, k); -inf / -1 beyond the block's size
        i = np.where(i >= 0, i + first, -1)
        if result is None and heap is None:
            result = (d, i)  # a single block needs no merge: exactly what one FAISS Flat index returns
            continue
        if heap is None:
            heap = faiss.ResultHeap(len(queries), k, keep_max=True)
            heap.add_result(*result)
        heap.add_result(np.ascontiguousarray(d), np.ascontiguousarray(i))
    if heap is None:
        if result is None:  # no rows at all
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        return result
    heap.finalize()
    d, i = heap.D, heap.I
    d[i < 0] = -np.inf
    return d, i


@torch.no_grad()
def _torch_stream(embeddings, queries, k, device, block_rows) -> tuple[np.ndarray, np.ndarray]:
    with torch.autocast(device.type, enabled=False):  # float32 ranking under a bf16 trainer too
        return _torch_stream_f32(embeddings, queries, k, device, block_rows)


def _torch_stream_f32(embeddings, queries, k, device, block_rows) -> tuple[np.ndarray, np.ndarray]:
    q = torch.from_numpy(queries).to(device)  # (Q, H)
    best = torch.full((len(q), k), float("-inf"), device=device)  # (Q, k)
    rows = torch.full((len(q), k), -1, dtype=torch.long, device=device)  # (Q, k)
    q_chunk = max(1, (1 << 26) // block_rows)  # bounds each (q_chunk, block) score matrix at 256 MiB
    for first, block in embeddings.blocks(block_rows):
        b = torch.tensor(block, device=device, dtype=torch.float32)  # (n, H); a copy: the block may be a read-only file view
        scores, ids = exact_search(b, q, k, batch_size=q_chunk)  # (Q, k); -inf / -1 beyond the block's size
        scores, ids = torch.cat([best, scores], dim=1), torch.cat([rows, torch.where(ids >= 0, ids + first, -1)], 1)
        keep = scores.topk(k, dim=1)  # (Q, k) of the 2k candidates
        best, rows = keep.values, ids.gather(1, keep.indices)
    return best.cpu().numpy(), rows.cpu().numpy()


def index_file(directory: Path, factory: str) -> Path:
    """Where the FAISS index of `factory` over the embeddings in `directory` is kept: the one file name."""
    return Path(directory) / f"index-{''.join(c if c.isalnum() else '_' for c in factory)}.faiss"


def shared_index(embeddings: EmbeddingShards, factory: str, procs: Processes, gpu: bool):
    """One FAISS index over `embeddings`, built once: by process 0, written beside the embeddings and read by the
    others. Its memory is the index's own (compressed for PQ); exact search does not come here."""
    faiss = import_faiss()
    path = index_file(embeddings.directory, factory)
    if procs.world_size == 1:
        index = build_index(embeddings, factory)
    else:
        if procs.rank == 0:
            index = build_index(embeddings, factory)
            tmp = path.with_name(f".{path.name}.tmp")
            faiss.write_index(index, str(tmp))
            os.replace(tmp, path)
        procs.barrier()
        if procs.rank != 0:
            index = faiss.read_index(str(path))
    return to_gpu(index, procs.device.index or 0) if gpu else index


def gather_rows(local: np.ndarray, procs: Processes) -> np.ndarray:
    """Every process's (n_r, ...) array concatenated in rank order, on every process (n_r may differ)."""
    if procs.world_size == 1 or procs.all_gather is None:
        return local
    counts = procs.all_gather(torch.tensor([len(local)], device=procs.device)).reshape(-1).cpu().tolist()
    width = max(counts)
    padded = np.zeros((width, *local.shape[1:]), dtype=local.dtype)
    padded[: len(local)] = local
    gathered = procs.all_gather(torch.from_numpy(padded).to(procs.device)).cpu().numpy()  # (W, width, ...)
    return np.concatenate([gathered[r, :c] for r, c in enumerate(counts)])


def gather_results(d: np.ndarray, i: np.ndarray, k: int, what: str, procs: Processes) -> tuple[np.ndarray, np.ndarray]:
    """This process's (Q_r, k) scores and rows gathered with every process's, in rank order, on every process;
    process 0 warns when some queries got fewer than k results (`warn_short_results`). Collective."""
    d, i = gather_rows(d, procs), gather_rows(i, procs)
    if procs.rank == 0:
        warn_short_results(i, k, what)
    return d, i


class FixedIndex:
    """A search handle over one set of embeddings, built once and searched often (`CorpusIndex.searcher`).

    Exact search keeps the matrix on the GPU when the model runs there (one copy per process: N x H x 4 bytes;
    ADORE does the same) and streams over the memory-mapped files on the CPU; other factory strings build one
    shared FAISS index (`shared_index`). `vectors` returns stored rows for recomputing scores with gradient.
    """

    def __init__(self, embeddings: EmbeddingShards, factory: str = "Flat", procs: Processes | None = None,
                 resident: bool | None = None, params: dict[str, float] | None = None, built=None) -> None:
        """resident: hold the matrix on the process's device for exact search (None: when that is a GPU).
        params: FAISS search parameters of a non-exact factory, set once on the index (CPU or GPU).
        built: the FAISS index of a non-exact factory already built over these embeddings (read from a file)."""
        if is_exact(factory) and params:
            raise ValueError(f"exact search ({factory!r}) has no search parameters, got {params}")
        self.embeddings, self.factory, self.params = embeddings, factory, params
        self.procs = procs or Processes()
        self.backend = search_backend(factory, self.procs.device)
        self.resident: Tensor | None = None  # (N, H) on the device, exact search there with torch
        self.index = None
        if is_exact(factory) and (self.backend == "torch" if resident is None else resident):
            self.resident = torch.empty(embeddings.shape, device=self.procs.device)  # filled block by block
            for first, block in embeddings.blocks():
                self.resident[first : first + len(block)] = torch.from_numpy(np.array(block))
        elif not is_exact(factory):
            if built is None:
                self.index = shared_index(embeddings, factory, self.procs, gpu=self.backend == "faiss-gpu")
            else:
                self.index = to_gpu(built, self.procs.device.index or 0) if self.backend == "faiss-gpu" else built
            if params:
                set_search_params(self.index, params, factory)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) scores and rows for this process's (Q, H) queries, ranked in float32 with autocast off (LTRe
        searches from inside its bf16 training step); local, no collective. The first call whose results are
        short of k is the caller's to report (`warn_short_results`)."""
        k = min(k, len(self.embeddings))
        if self.resident is not None:
            q = torch.from_numpy(np.asarray(queries, dtype=np.float32)).to(self.resident.device)  # (Q, H)
            block = max(1, (1 << 28) // len(self.resident))  # queries per (block, N) score matrix: 1 GiB at most
            d, i = exact_search(self.resident, q, k, batch_size=block)  # float32, autocast off
            return d.cpu().numpy(), i.cpu().numpy()
        if self.index is None:  # streamed over the files: torch on a GPU, FAISS on the CPU
            return exact_search_stream(self.embeddings, queries, k, "torch" if self.backend == "torch" else "faiss",
                                       self.procs.device)
        return search(self.index, queries, k)

    def vectors(self, rows: np.ndarray, device: torch.device) -> Tensor:
        """(len(rows), H) float32 stored embeddings of corpus rows, on `device`."""
        if self.resident is not None:
            return self.resident[torch.from_numpy(rows).to(self.resident.device)].to(device)
        return torch.from_numpy(self.embeddings.take(rows)).to(device)
