"""Encoding a whole token store (corpus or queries) with the current model: in memory, or to shard files on disk
with each process of a job encoding its own contiguous share."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lit_dr.data.batches import TokenBatch
from lit_dr.data.progress import progress
from lit_dr.data.token_store import TokenStore
from lit_dr.index.embeddings import (
    EmbeddingDtype,
    EmbeddingShards,
    finish_shard,
    open_shard_for_writing,
    shard_path,
    token_balanced_bounds,
    write_meta,
)

# A factory, not a context: each batch enters a fresh one. Lightning's `forward_context()` is a generator-based
# context manager that can be entered only once; reusing one across batches crashed every GPU run at batch two.
AutocastFactory = Callable[[], contextlib.AbstractContextManager]
WRITE_WINDOW = 65_536  # rows encoded and written together: 192 MiB of float32 at 768 dimensions


def autocast_on(device: torch.device) -> bool:
    """Half-precision autocast only on accelerators: on CPU bf16 is hundreds of times slower than fp32."""
    return torch.device(device).type != "cpu"


def autocast_factory(precision_plugin, device: torch.device | str) -> AutocastFactory:
    """Fresh inference autocast contexts of the trainer's precision (e.g. bf16-mixed) on `device`, none on CPU."""
    if precision_plugin is None or not autocast_on(torch.device(device)):
        return contextlib.nullcontext
    return precision_plugin.forward_context


def length_sorted_chunks(lengths: np.ndarray, batch_size: int, window: int | None = None) -> list[np.ndarray]:
    """Positions 0..N-1 grouped into batches of similar length, longest first (out-of-memory shows at once).

    Sorting by length keeps padding, and so wasted compute, small; sentence-transformers' `encode` does the same.
    With `window`, positions are sorted within consecutive windows of that many, window after window, so a writer
    can fill one window in memory and write it to disk in order instead of scattering rows over a file.
    """
    window = window or max(len(lengths), 1)
    batches = []
    for start in range(0, len(lengths), window):
        order = start + np.argsort(-lengths[start : start + window], kind="stable")
        batches += [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return batches


@torch.inference_mode()
def iter_encoded(
    encode: Callable[[TokenBatch], Tensor],
    store: TokenStore,
    rows: np.ndarray,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    autocast: AutocastFactory | None = None,
    show_progress: bool = True,
    desc: str = "encode",
    window: int | None = None,
) -> Iterator[tuple[np.ndarray, Tensor]]:
    """(positions in `rows`, (n, H) float32 CPU embeddings) for length-sorted batches of `store` rows (sorted
    within consecutive windows of `window` positions when given: see `length_sorted_chunks`)."""
    device = torch.device(device)
    autocast = autocast or contextlib.nullcontext
    with progress(desc, len(rows), show=show_progress) as bar:  # a bar on a terminal, else one line with its time
        for positions in length_sorted_chunks(store.lengths[rows], batch_size, window):
            batch = store.batch(rows[positions]).to(device)
            with autocast():  # entered once per batch
                emb = encode(batch).float()  # (n, H)
            yield positions, emb.cpu()
            bar.update(len(positions))


def encode_store(
    encode: Callable[[TokenBatch], Tensor],
    store: TokenStore,
    rows: np.ndarray | None = None,
    **kwargs,
) -> Tensor:
    """(len(rows), H) float32 CPU embeddings of `store` rows (all rows when None), in the order of `rows`.

    Holds the whole result in memory: for a corpus, `encode_to_shards` writes it to disk instead.
    kwargs: those of `iter_encoded`.
    """
    rows = np.arange(len(store)) if rows is None else np.asarray(rows, dtype=np.int64)
    out: Tensor | None = None
    for positions, emb in iter_encoded(encode, store, rows, **kwargs):
        if out is None:
            out = torch.empty(len(rows), emb.shape[1])
        out[torch.from_numpy(positions)] = emb
    if out is None:
        raise ValueError("nothing to encode: no rows")
    return out


def encode_shard(
    encode: Callable[[TokenBatch], Tensor],
    store: TokenStore,
    directory: str | Path,
    dim: int,
    rank: int = 0,
    world_size: int = 1,
    rows: np.ndarray | None = None,
    dtype: EmbeddingDtype = "float32",
    **kwargs,
) -> None:
    """This process's part of `encode_to_shards`: encode its share of `store` rows (all when None), a contiguous
    range balanced by token count, into its own memory-mapped shard; process 0 also writes `meta.json`.

    Memory: one batch of embeddings at a time; the shard's pages belong to the file, not to the process.
    kwargs: those of `iter_encoded`.
    """
    directory = Path(directory)
    rows = np.arange(len(store)) if rows is None else np.asarray(rows, dtype=np.int64)
    bounds = token_balanced_bounds(store.lengths[rows], world_size)  # (W + 1,)
    mine = rows[bounds[rank] : bounds[rank + 1]]
    path = shard_path(directory, rank, world_size)
    out, tmp = open_shard_for_writing(path, len(mine), dim, dtype)
    # Rows are encoded in length order within windows and written window by window, in file order: scattering
    # them over a memory-mapped file page by page is much slower than writing it front to back.
    buffer, start = np.empty((min(WRITE_WINDOW, len(mine)), dim), dtype=dtype), 0
    for positions, emb in iter_encoded(encode, store, mine, window=WRITE_WINDOW, **kwargs):
        if emb.shape[1] != dim:
            raise ValueError(f"the encoder gives {emb.shape[1]}-dim embeddings, {dim} were announced")
        if positions[0] >= start + WRITE_WINDOW:  # the previous window is complete
            out[start : start + WRITE_WINDOW] = buffer
            start += WRITE_WINDOW
        buffer[positions - start] = emb.numpy()
    if len(mine):
        out[start:] = buffer[: len(mine) - start]
    finish_shard(out, tmp, path)
    if rank == 0:
        write_meta(directory, bounds, dim, dtype)


def encode_to_shards(
    encode: Callable[[TokenBatch], Tensor],
    store: TokenStore,
    directory: str | Path,
    dim: int,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
    **kwargs,
) -> EmbeddingShards:
    """Encode `store` rows into `directory`, each process of the job writing its share (`encode_shard`); then all
    wait at `barrier` and every one returns the same `EmbeddingShards` view (row i = the i-th of `rows`).

    Needs a directory every process can read (one node, or a shared filesystem). kwargs: those of `encode_shard`.
    """
    encode_shard(encode, store, directory, dim, rank, world_size, **kwargs)
    if barrier is not None and world_size > 1:
        barrier()  # every shard and meta.json are in place before anyone reads
    return EmbeddingShards(directory)
