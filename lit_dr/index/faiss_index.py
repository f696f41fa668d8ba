"""FAISS reached through small plain functions over arrays (in the manner of `faiss.contrib`).

`faiss` is imported lazily so that the library imports without it; choose the build at install time
(`lit-dr[cpu]` or `lit-dr[gpu]`). GPU use is an explicit argument (one GPU: this process's) and never a silent
fallback here; `lit_dr.index.search` decides, in one place, what runs where.
"""

from __future__ import annotations

import logging
import math
import re
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)
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
# What FAISS's GPU cloner (`index_cpu_to_gpu`) implements: an optional chain of transforms (PCA, OPQ, L2norm),
# then Flat or an IVF with a flat coarse quantizer over Flat, scalar-quantized or 8-bit PQ codes (PQ with a number
# of sub-quantizers the GPU kernels have). No HNSW (nor IVF over an HNSW quantizer), fast-scan PQ, LSH, refinement.
_GPU_TRANSFORMS = r"(?:(?:PCAR?W?R?\d+|OPQ\d+(?:_\d+)?|L2norm),)*"
_GPU_INDEX = re.compile(_GPU_TRANSFORMS + r"(?:Flat|IVF\d+,(?:Flat|SQ(?:4|6|8|fp16)|PQ(\d+)(?:x8)?))")
_GPU_PQ_M = {1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96}
_GPU_LUT_BYTES = 48 * 1024  # shared memory a GPU block always has: larger float32 IVF-PQ lookup tables need float16


def gpu_supported(factory: str) -> bool:
    """Whether FAISS's GPU build implements the index of `factory` (pure: no FAISS, no GPU needed).

    True for "Flat", "IVF{n},Flat", "IVF{n},SQ8" and "IVF{n},PQ{m}" with m a GPU sub-quantizer count (1 to 64,
    96), optionally after "PCA{d}," / "OPQ{m}," / "L2norm,"; False for "HNSW32", "IVF{n}_HNSW32,...", "PQ64x4fs",
    "...,RFlat" and anything else, which `search.search_backend` keeps on the CPU.
    """
    match = _GPU_INDEX.fullmatch(factory.replace(" ", ""))
    return match is not None and (match.group(1) is None or int(match.group(1)) in _GPU_PQ_M)


def _needs_float16_tables(faiss: Any, index: Any) -> bool:
    """IVF-PQ whose float32 lookup tables (M x 2^nbits x 4 bytes: 64 KiB at PQ64) exceed a GPU block's shared
    memory: the GPU build refuses it unless the tables are float16."""
    ivf = faiss.try_extract_index_ivf(index) if hasattr(faiss, "try_extract_index_ivf") else None
    if ivf is None or not isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ):  # downcast: IndexIVF -> class
        return False
    ivf = faiss.downcast_index(ivf)
    return ivf.pq.M * ivf.pq.ksub * 4 > _GPU_LUT_BYTES


def to_gpu(index: faiss.Index, device: int) -> faiss.Index:
    """A copy of `index` on GPU `device` (under DDP the process's own: cloning onto every GPU from every process
    would put N copies on each); the device's FAISS resources live as long as the process. IVF-PQ with lookup
    tables too large for float32 (more than 48 sub-quantizers of 8 bits) is cloned with float16 tables
    (`GpuClonerOptions.useFloat16`). RuntimeError when FAISS has no GPU build or sees no GPU."""
    faiss = import_faiss()
    _check_gpu(faiss)
    if device not in _GPU_RESOURCES:
        _GPU_RESOURCES[device] = faiss.StandardGpuResources()
    if _needs_float16_tables(faiss, index):
        options = faiss.GpuClonerOptions()
        options.useFloat16 = True  # for IVF-PQ: float16 lookup tables (useFloat16LookupTables)
        return faiss.index_cpu_to_gpu(_GPU_RESOURCES[device], device, index, options)
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


def _probe_dim(factory: str) -> int:
    # A dimension every component of `factory` accepts: a multiple of its PQ sub-quantizers and PCA/OPQ widths.
    return math.lcm(8, *(int(n) for n in re.findall(r"(?:PQ|PCA[A-Z]*|RR|_)(\d+)", factory)))


def check_search_params(factory: str, params: dict[str, float] | None, dim: int | None = None) -> None:
    """Fail early, naming the factory, when `factory` is not a FAISS factory string or its index has no search
    parameter of one of the names in `params` (IVF: nprobe, max_codes; HNSW: efSearch; exact "Flat": none).
    Checked on an empty index of `dim` (or a dimension the factory accepts): nothing is trained or allocated."""
    faiss = import_faiss()
    dim = dim or _probe_dim(factory)
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ValueError(f"invalid FAISS factory string {factory!r}: {err}") from err
    if params:
        set_search_params(index, params, factory)


def fit_nlist(factory: str, rows: int) -> str:
    """`factory` with its IVF list count capped for an index of `rows` vectors: k-means cannot train more lists
    than it has points, so "IVF4096,Flat" over 1,000 DANCE training queries becomes "IVF25,Flat" (FAISS's own
    minimum of 39 training points per list), logged as a warning. Other factories come back unchanged."""
    match = re.search(r"IVF(\d+)", factory)
    if match is None or int(match.group(1)) <= rows:
        return factory
    capped = f"{factory[: match.start(1)]}{max(1, rows // 39)}{factory[match.end(1):]}"
    log.warning("index %r over %d vectors: more IVF lists than vectors, using %r", factory, rows, capped)
    return capped


def set_search_params(index: faiss.Index, params: dict[str, float], factory: str | None = None) -> None:
    """Set search-time parameters on `index` in place, e.g. {"nprobe": 16} or {"efSearch": 128}; ValueError
    naming the index (`factory` when given) for a parameter it does not have or a value below 1."""
    faiss = import_faiss()
    # GpuParameterSpace also knows GPU indexes and replicas, and defers to ParameterSpace otherwise.
    space = faiss.GpuParameterSpace() if hasattr(faiss, "GpuParameterSpace") else faiss.ParameterSpace()
    what = repr(factory) if factory else type(index).__name__
    for name, value in params.items():
        if not isinstance(value, int | float) or value < 1:
            raise ValueError(f"search parameter {name}={value!r} for index {what}: must be a number >= 1")
        try:
            space.set_index_parameter(index, name, float(value))
        except RuntimeError as err:
            known = "IVF: nprobe, max_codes; HNSW: efSearch; Flat: none"
            raise ValueError(f"index {what} has no search parameter {name!r} ({known})") from err


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
        doc: (N, H).  queries: (Q, H), same device; both ranked in float32 (converted if not), with autocast
            off whatever the caller's precision: a bf16 matmul turns distinct scores into ties.
    Returns:
        (scores, ids): (Q, k) float32 scores and int64 row ids, best first; padded with -inf / -1 when k > N.
    """
    doc, queries = doc.float(), queries.float()  # no copy when already float32
    with torch.autocast(doc.device.type, enabled=False):
        return _exact_search(doc, queries, k, batch_size)


def _exact_search(doc, queries, k, batch_size):
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
