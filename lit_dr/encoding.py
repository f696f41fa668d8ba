"""Encoding a whole token store (corpus or queries) with the current model, sharded over processes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from lit_dr.data.batches import TokenBatch
from lit_dr.data.token_store import TokenStore


def length_sorted_chunks(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Positions 0..N-1 grouped into batches of similar length, longest first (out-of-memory shows at once).

    Sorting by length keeps padding, and so wasted compute, small; sentence-transformers' `encode` does the same.
    """
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def encode_store(
    encode: Callable[[TokenBatch], Tensor],
    store: TokenStore,
    rows: np.ndarray | None = None,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
    show_progress: bool = True,
    desc: str = "encode",
) -> Tensor:
    """(len(rows), H) float32 CPU embeddings of `store` rows (all rows when None), in the order of `rows`."""
    from tqdm.auto import tqdm

    rows = np.arange(len(store)) if rows is None else np.asarray(rows, dtype=np.int64)
    out: Tensor | None = None
    device = torch.device(device)
    # Half-precision autocast only on accelerators: on CPU bf16 is hundreds of times slower than fp32.
    context = autocast if (autocast is not None and device.type != "cpu") else contextlib.nullcontext()
    with tqdm(total=len(rows), desc=desc, unit=" texts", disable=not show_progress, leave=False) as bar:
        for positions in length_sorted_chunks(store.lengths[rows], batch_size):
            batch = store.batch(rows[positions]).to(device)
            with context:
                emb = encode(batch).float()  # (n, H)
            if out is None:
                out = torch.empty(len(rows), emb.shape[1])
            out[torch.from_numpy(positions)] = emb.cpu()
            bar.update(len(positions))
    assert out is not None, "nothing to encode"
    return out


def encode_store_sharded(
    encode: Callable[[TokenBatch], Tensor],
    store: TokenStore,
    all_gather: Callable[[Tensor], Tensor] | None,
    rows: np.ndarray | None = None,
    rank: int = 0,
    world_size: int = 1,
    **kwargs,
) -> Tensor:
    """(len(rows), H) embeddings of `store` rows (all when None), each process encoding 1/world_size of them.

    Rows are dealt out round-robin in length order so every process gets the same amount of work; the shards
    are padded to one size, gathered with `all_gather` ((n, ...) -> (world_size, n, ...)), and put back in place.
    Every process returns the full matrix.
    """
    rows = np.arange(len(store)) if rows is None else np.asarray(rows, dtype=np.int64)
    if world_size == 1 or all_gather is None:
        return encode_store(encode, store, rows=rows, **kwargs)
    order = np.argsort(-store.lengths[rows], kind="stable")
    mine = np.sort(order[rank::world_size])  # positions in `rows`
    emb = encode_store(encode, store, rows=rows[mine], **kwargs)  # (n_r, H)
    width = -(-len(rows) // world_size)
    padded = torch.zeros(width, emb.shape[1])
    padded[: len(mine)] = emb
    positions = torch.full((width,), -1, dtype=torch.long)
    positions[: len(mine)] = torch.from_numpy(mine)
    device = kwargs.get("device", "cpu")
    all_emb = all_gather(padded.to(device)).reshape(-1, emb.shape[1]).cpu()  # (W * width, H)
    all_pos = all_gather(positions.to(device)).reshape(-1).cpu()  # (W * width,)
    keep = all_pos >= 0
    out = torch.empty(len(rows), emb.shape[1])
    out[all_pos[keep]] = all_emb[keep]
    return out
