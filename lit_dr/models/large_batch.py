"""Large contrastive batches as pure functions: negatives shared across processes, and gradient caching.

Negatives across processes: every process gathers the batch's embeddings from all processes (its own rows stay
the differentiable tensors it computed) and computes the loss of the *global* batch, exactly as one process would
on the concatenated batch (rank r's query i is global query r * B + i, its positive global document
(r * B + i) * G: the labels shift by r * B * G). Each process's backward then yields its own rows' share of the
global gradient, and DDP averages the W shares: the loss is multiplied by W so that the average is the sum.
(Tevatron's scheme. Every process computes the same (W B, W B G) score matrix, which is small next to
encoding; in exchange any `compute_loss` works unchanged, labels and masks included.)

Gradient caching (Gao et al., RepL4NLP 2021, arXiv 2101.06983, "GradCache"): embed the batch in chunks without a
graph, compute the loss and its gradient with respect to the embeddings, then embed each chunk again with a graph
and back-propagate the cached gradient into the towers. Memory holds one chunk's activations, not the batch's.
Each chunk's second pass restores the random state its first pass started from, so dropout draws the same masks
and the gradient is exact (sentence-transformers' CachedMultipleNegativesRankingLoss once lost this).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from lit_dr.data.batches import TokenBatch, TrainBatch, excluded_mask

Encode = Callable[[TokenBatch], Tensor]  # (n, L) tokens -> (n, H) embeddings
Excluded = Callable[[np.ndarray], list[set[int]]]  # query rows -> per query the corpus rows it may not have as negatives


# -- negatives across processes -------------------------------------------------------------------------------
def gather_keep_local(x: Tensor) -> Tensor:
    """(W * n, ...) every process's `x`, in rank order; this process's rows are `x` itself, so its gradient flows
    into them, and only into them. Every process must pass the same shape."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def gather_padded(x: Tensor, pad_value: int = 0) -> Tensor:
    """(W * n, L_max) every process's (n, L_r) `x`, each right-padded to the longest L_r (no gradient)."""
    width = torch.tensor([x.shape[1]], device=x.device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    padded = torch.nn.functional.pad(x, (0, int(width) - x.shape[1]), value=pad_value)  # (n, L_max)
    return gather_keep_local(padded)


def gather_train_batch(batch: TrainBatch, excluded_docs: Excluded) -> TrainBatch:
    """The batches of all processes as one, in rank order: what one process would hold for their concatenation.

    Every field is gathered by its type, so a field added to `TrainBatch` is gathered or refused, never dropped:
    tokens right-padded to the longest of each field, tensors and each tensor of a feature dict concatenated in
    rank order (every process must hold the same keys and shapes), None kept. `excluded` (W B, W B G) is
    recomputed for this process's queries against every process's documents (`excluded_docs`:
    `RetrievalDataModule.excluded_docs`, the rule of the one-process mask), then gathered: another process's
    document excluded for a local query is masked as well.
    """

    def gather(name: str, value):
        if value is None:
            return None
        if isinstance(value, TokenBatch):
            return TokenBatch(gather_padded(value.input_ids), gather_padded(value.attention_mask))
        if isinstance(value, Tensor):
            return gather_keep_local(value)
        if isinstance(value, dict) and all(isinstance(v, Tensor) for v in value.values()):
            return {key: gather_keep_local(v) for key, v in sorted(value.items())}  # same order on every rank
        raise TypeError(f"gather_train_batch: TrainBatch.{name} is a {type(value).__name__}; only TokenBatch, "
                        "Tensor, dict of Tensors or None can be gathered across processes (extend `gather`)")

    gathered = {f.name: gather(f.name, getattr(batch, f.name)) for f in fields(batch) if f.name != "excluded"}
    doc_rows = gathered["doc_rows"]  # (W * B * G,)
    mine = excluded_mask(excluded_docs(batch.query_rows.cpu().numpy()), doc_rows.cpu().numpy())  # (B, W * B * G)
    mask = gather_keep_local(torch.from_numpy(mine).to(batch.doc_rows.device, torch.uint8)).bool()
    return type(batch)(**gathered, excluded=mask)


# -- gradient caching -----------------------------------------------------------------------------------------
def token_chunks(tokens: TokenBatch, size: int) -> list[TokenBatch]:
    """Consecutive row slices of at most `size` rows (padding width kept, so each slice embeds as in the batch)."""
    return [TokenBatch(tokens.input_ids[i:i + size], tokens.attention_mask[i:i + size])
            for i in range(0, tokens.input_ids.shape[0], size)]


RngState = tuple[Tensor, Tensor | None]  # (CPU generator state, the CUDA device's or None)


def rng_state(device: torch.device) -> RngState:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_state(state: RngState, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _add(total: Tensor | None, g: Tensor | None) -> Tensor | None:
    if g is None:
        return total
    return g if total is None else total.add_(g)


class _ReplayChunks(torch.autograd.Function):
    """The loss value in the forward; in the backward, `replay(grad)` returns the parameters' gradients.

    The parameters are inputs, so the outer backward accumulates what `replay` returns into their `.grad` once:
    gradient accumulation, AMP's loss scale and DDP's gradient hooks see an ordinary backward.
    """

    @staticmethod
    def forward(ctx, replay: Callable[[Tensor], list[Tensor | None]], value: Tensor, *params: Tensor) -> Tensor:
        ctx.replay = replay
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        grads = ctx.replay(grad)
        ctx.replay = None  # frees the cached gradients and the tokens
        return (None, None, *grads)


def grad_cached_loss(
    texts: dict[str, tuple[Encode, TokenBatch]],
    chunk_size: int,
    loss_fn: Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]],
    params: Sequence[Tensor],
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """The loss of a batch embedded `chunk_size` rows at a time, with the gradient of the unchunked computation.

    1. Each text group is embedded chunk by chunk under `no_grad`, recording the random state before each chunk.
    2. `loss_fn` (embeddings by name -> (objective, loss to report)) runs on leaf copies of the embeddings;
       the objective's gradient with respect to them (and to any of `params` the loss uses directly, such as a
       learnt temperature) is kept.
    3. What is returned carries the objective's value; its backward re-embeds each chunk with a graph, from that
       chunk's recorded random state and under the autocast state of step 1, and back-propagates the cached
       gradient times the incoming one (1 / accumulate_grad_batches, AMP's scale). The random state is restored
       afterwards, so the rest of training draws what it would have without the second pass.

    Args:
        texts: name -> (encode function, (n, L) tokens); the names are the keys `loss_fn` receives.
        params: every parameter that requires a gradient (all of them become inputs of the returned tensor).
    Returns:
        (objective with a grad_fn, detached loss to report).
    """
    states: dict[str, list[RngState]] = {}
    chunks = {name: token_chunks(tokens, chunk_size) for name, (_, tokens) in texts.items()}
    embeddings: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, (encode, _) in texts.items():
            states[name], parts = [], []
            for chunk in chunks[name]:
                states[name].append(rng_state(device))
                parts.append(encode(chunk))  # (c, H)
            embeddings[name] = torch.cat(parts)  # (n, H)
    autocast = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))

    leaves = {name: e.detach().requires_grad_() for name, e in embeddings.items()}
    params = list(params)
    with torch.enable_grad():
        objective, loss = loss_fn(leaves)
        grads = torch.autograd.grad(objective, [*leaves.values(), *params], allow_unused=True)
    direct = grads[len(leaves):]
    # One entry per chunk whose embeddings the loss used: (encode, tokens, random state, (c, H) cached gradient).
    replays = []
    for (name, (encode, _)), cached in zip(texts.items(), grads[: len(leaves)], strict=True):
        if cached is not None:
            rows = cached.split([c.input_ids.shape[0] for c in chunks[name]])
            replays += [(encode, c, s, g) for c, s, g in zip(chunks[name], states[name], rows, strict=True)]

    def replay(scale: Tensor) -> list[Tensor | None]:
        total = [None if g is None else g * scale for g in direct]
        outside = rng_state(device)
        try:
            with torch.enable_grad(), torch.autocast(device.type, dtype=autocast[1], enabled=autocast[0]):
                for encode, chunk, state, cached in replays:
                    set_rng_state(state, device)
                    emb = encode(chunk)  # (c, H), the same values as in step 1
                    step = torch.autograd.grad(emb, params, cached * scale, allow_unused=True)
                    total = [_add(t, g) for t, g in zip(total, step, strict=True)]
        finally:
            set_rng_state(outside, device)
        return total

    return _ReplayChunks.apply(replay, objective.detach(), *params), loss.detach()
