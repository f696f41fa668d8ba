"""FAISS reached through small plain functions over arrays (in the manner of `faiss.contrib`).

`faiss` is imported lazily so that the library imports without it; choose the build at install time
(`lit-dr[cpu]` or `lit-dr[gpu]`). GPU use is an explicit argument (one GPU: this process's) and never a silent
fallback here; `lit_dr.search` decides, in one place, what runs where.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    import faiss

ADD_BLOCK = 65_536  # rows per `index.add` call: bounds the float32 copy of non-float32 / non-contiguous input


def import_faiss() -> Any:
    """Import `faiss`, or explain which extra installs it."""
    try:
        import faiss
    except ImportError as err:
        raise ImportError(
            "lit_dr needs FAISS for indexing: pip install 'lit-dr[cpu]' (faiss-cpu) "
            "or 'lit-dr[gpu]' (faiss-gpu-cu12)"
        ) from err
    return faiss


def _as_f32_rows(x: np.ndarray) -> np.ndarray:
    # No copy when `x` already is C-contiguous float32 (the common case, memmaps included).
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_gpu(faiss: Any) -> None:
    if not hasattr(faiss, "StandardGpuResources"):
        raise RuntimeError(
            "a GPU index was asked for, but the installed FAISS has no GPU support: pip install 'lit-dr[gpu]' (faiss-gpu-cu12)"
        )
    if faiss.get_num_gpus() < 1:
        raise RuntimeError("a GPU index was asked for, but FAISS sees no GPU (faiss.get_num_gpus() == 0)")


_GPU_RESOURCES: dict[int, Any] = {}


def to_gpu(index: faiss.Index, device: int) -> faiss.Index:
    """A copy of `index` on GPU `device` (under DDP the process's own: cloning onto every GPU from every process
    would put N copies on each); the device's FAISS resources live as long as the process. RuntimeError when FAISS
    has no GPU build or sees no GPU."""
    faiss = import_faiss()
    _check_gpu(faiss)
    if device not in _GPU_RESOURCES:
        _GPU_RESOURCES[device] = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(_GPU_RESOURCES[device], device, index)


def build_index(
    embeddings: np.ndarray,
    factory: str = "Flat",
    metric: Literal["ip", "l2"] = "ip",
    train_sample: int | None = 100_000,
    seed: int = 0,
) -> faiss.Index:
    """Build a FAISS index from a factory string ("Flat", "IVF4096,PQ64", "HNSW32", ...) and add every row.

    Args:
        embeddings: (N, H) document embeddings; converted to float32 one block at a time if needed.
        metric: "ip" (inner product, higher is better) or "l2" (squared distance, lower is better).
        train_sample: indexes that need training (IVF, PQ) train on a uniform sample of at most this
            many rows drawn with `seed`; None trains on all rows.
    Returns:
        The index, row i of `embeddings` having id i.
    """
    faiss = import_faiss()
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (N, H), got shape {embeddings.shape}")
    n, dim = embeddings.shape
    metric_type = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}[metric]
    try:
        index = faiss.index_factory(dim, factory, metric_type)
    except RuntimeError as err:
        raise ValueError(f"invalid FAISS factory string {factory!r}: {err}") from err
    if not index.is_trained:
        if train_sample is not None and n > train_sample:
            rows = np.sort(np.random.default_rng(seed).choice(n, size=train_sample, replace=False))
            train = _as_f32_rows(embeddings[rows])  # (train_sample, H)
        else:
            train = _as_f32_rows(embeddings)
        index.train(train)
        del train

    for start in range(0, n, ADD_BLOCK):
        index.add(_as_f32_rows(embeddings[start : start + ADD_BLOCK]))
    return index


def set_search_params(index: faiss.Index, params: dict[str, float]) -> None:
    """Set search-time parameters on `index` in place, e.g. {"nprobe": 16} or {"efSearch": 128}."""
    faiss = import_faiss()
    # GpuParameterSpace also knows GPU indexes and replicas, and defers to ParameterSpace otherwise.
    space = faiss.GpuParameterSpace() if hasattr(faiss, "GpuParameterSpace") else faiss.ParameterSpace()
    spec = ",".join(f"{name}={value:g}" for name, value in params.items())
    try:
        space.set_index_parameters(index, spec)
    except RuntimeError as err:
        raise ValueError(f"FAISS rejected search parameters {spec!r}: {err}") from err


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    batch_size: int = 4096,
    params: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k search in blocks of `batch_size` queries.

    Args:
        queries: (Q, H), converted to float32 per block.
        params: search-time parameters such as {"nprobe": 16}; applied to `index` in place (they persist).
    Returns:
        (D, I): (Q, k) float32 scores and (Q, k) int64 row ids, best first. Slots FAISS could not fill
        (k > ntotal, or too few candidates probed) have I = -1 and D = -inf for "ip" (+inf for "l2"),
        i.e. the worst possible value, never FAISS's +-FLT_MAX sentinel.
    """
    faiss = import_faiss()
    if params:
        set_search_params(index, params)
    worst = np.float32(np.inf if index.metric_type == faiss.METRIC_L2 else -np.inf)
    num_queries = queries.shape[0]
    dist = np.empty((num_queries, k), dtype=np.float32)
    ids = np.empty((num_queries, k), dtype=np.int64)
    for start in range(0, num_queries, batch_size):
        d_blk, i_blk = index.search(_as_f32_rows(queries[start : start + batch_size]), k)
        d_blk[i_blk < 0] = worst
        dist[start : start + len(d_blk)] = d_blk
        ids[start : start + len(i_blk)] = i_blk
    return dist, ids


@torch.no_grad()
def exact_search(
    doc: torch.Tensor, queries: torch.Tensor, k: int, batch_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product top-k by blocked matmul; the oracle for `search` and for small corpora.

    Args:
        doc: (N, H).  queries: (Q, H), same device and dtype.
    Returns:
        (scores, ids): (Q, k) scores and int64 row ids, best first; padded with -inf / -1 when k > N.
    """
    n = doc.shape[0]
    scores = torch.full((queries.shape[0], k), float("-inf"), dtype=doc.dtype, device=doc.device)
    ids = torch.full((queries.shape[0], k), -1, dtype=torch.long, device=doc.device)
    kk = min(k, n)
    if kk == 0:
        return scores, ids
    for start in range(0, queries.shape[0], batch_size):
        sim = queries[start : start + batch_size] @ doc.T  # (b, N)
        top = sim.topk(kk, dim=1)
        scores[start : start + len(sim), :kk] = top.values
        ids[start : start + len(sim), :kk] = top.indices
    return scores, ids
