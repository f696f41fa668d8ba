"""The global random generators in the checkpoint, so that a resumed fit continues exactly like an uninterrupted one.

Lightning does not checkpoint torch's global generators, and dropout draws from them: without them a resumed run's
weights drift from an uninterrupted run's. (Batches and negatives have their own seeded generators.)
"""

from __future__ import annotations

import logging

import lightning as L
import torch

log = logging.getLogger(__name__)


def process_rng_state(device: torch.device) -> dict:
    """This process's random generators: torch's CPU one and, on a GPU, that of its own device."""
    state = {"torch": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def gather_by_rank(local: dict) -> dict[int, dict]:
    """Every process's `local` by global rank, on every process (collective under torch.distributed)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return {0: local}
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return dict(enumerate(gathered))


def rng_by_rank(saved: dict) -> dict[int, dict]:
    """A checkpoint's generator states by rank; a checkpoint from before they were kept per process held rank
    0's CPU state and the CUDA states of every visible device: rank 0's, its own device's first."""
    if "by_rank" in saved:
        return {int(r): s for r, s in saved["by_rank"].items()}
    cuda = saved.get("cuda") or []
    return {0: {"torch": saved["torch"], **({"cuda": cuda[0]} if len(cuda) else {})}}


def restore_rng_state(by_rank: dict[int, dict], rank: int, device: torch.device) -> bool:
    """Restore this process's generators from its own saved state; False (and nothing changed) when the
    checkpoint has none for this rank (it came from fewer processes). A saved CUDA state is restored on this
    process's device only, so a resume on fewer GPUs than the checkpoint's run never indexes a missing one."""
    state = by_rank.get(rank)
    if state is None:
        return False
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    return True


class RandomState(L.Callback):
    """Saves every process's global generators (by rank) in each checkpoint and restores its own at the start of
    a resumed fit. A process without a saved state (resumed on more processes) keeps its seeded one, with a
    warning; a checkpoint written before this callback existed holds them in `NegativeRefresh`'s state ("rng"),
    which is read too."""

    def __init__(self) -> None:
        self._saved: dict | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._device = trainer.strategy.root_device  # whose generator this process saves

    def state_dict(self) -> dict:
        # Only rank 0's callback state is written, but Lightning dumps a checkpoint on every process: the gather is
        # collective, and every process's own state reaches the file.
        return {"rng": {"by_rank": gather_by_rank(process_rng_state(getattr(self, "_device", torch.device("cpu"))))}}

    def load_state_dict(self, state: dict) -> None:
        self._saved = state.get("rng")

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # Runs before `load_state_dict`, which replaces this with the callback's own state where there is one.
        legacy = [s["rng"] for s in (checkpoint.get("callbacks") or {}).values() if isinstance(s, dict) and "rng" in s]
        if self._saved is None and legacy:
            self._saved = legacy[0]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._saved is None:
            return
        by_rank = rng_by_rank(self._saved)
        restore_rng_state(by_rank, trainer.global_rank, pl_module.device)
        if trainer.is_global_zero and len(by_rank) != trainer.world_size:
            log.warning("the checkpoint holds the random generators of %d process(es), this run has %d: "
                        "process(es) without a saved state keep their seeded one, extra states are unused",
                        len(by_rank), trainer.world_size)
        self._saved = None
