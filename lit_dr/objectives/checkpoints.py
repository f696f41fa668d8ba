"""Checkpoint plumbing of the objectives: which class a checkpoint was trained as, how the towers' configs are kept
so that a checkpoint rebuilds its module alone, and the warm start (`init_checkpoint`), applied once.

Lightning's public API covers most of it (`save_hyperparameters`, `load_from_checkpoint`, `on_load_checkpoint`);
where it has none, the comment at that line says why.
"""

from __future__ import annotations

import importlib
import io
import logging
import sys
import warnings

import lightning as L
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# Lightning's own instantiator (what the CLI records): `load_from_checkpoint` rebuilds injected towers through it from
# their config in the hyperparameters. Lightning has no public name for it; its CLI writes this string.
INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
TOWERS = ("encoder", "doc_encoder")
# Hyperparameters of older checkpoints that the objectives no longer take: issue 17 moved where the corpus
# embeddings go to the data module (`RetrievalDataModule(embedding_dir, embedding_dtype)`).
MOVED_TO_DATA = ("embedding_dir", "embedding_dtype")


def trained_class(checkpoint_path) -> type | None:
    """The LightningModule class a checkpoint was saved from, when it says so (the CLI's `_class_path`, a private
    key of Lightning's CLI with no public reader, or lit_dr's own record) and its module is already imported (as
    Lightning, a checkpoint never makes us import code)."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    path = checkpoint.get("hyper_parameters", {}).get("_class_path") or checkpoint.get("lit_dr", {}).get("class_path")
    module, _, name = (path or "").rpartition(".")
    if module.startswith("lit_dr.") and module not in sys.modules:
        # lit_dr's own code, never a stranger's: an old module path (`lit_dr.modules.bm25neg`) is imported on
        # first use (`lit_dr._OldPathAlias`), so it may not be there yet.
        try:
            importlib.import_module(module)
        except ImportError:
            return None
    return getattr(sys.modules.get(module), name, None) if module else None


def without_moved_hparams(checkpoint_path):
    """`checkpoint_path` itself, or, for a checkpoint whose hyperparameters name options the module no longer takes
    (`MOVED_TO_DATA`), an in-memory copy without them: Lightning would pass them to `__init__`."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    hparams = checkpoint.get("hyper_parameters", {})
    moved = [k for k in MOVED_TO_DATA if k in hparams]
    if not moved:
        return checkpoint_path
    log.warning("%s: %s are the data module's options now; ignored", checkpoint_path, moved)
    for key in moved:
        hparams.pop(key)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return buffer


def tower_spec(tower: nn.Module | None) -> dict | None:
    """{"class_path", "init_args"} that rebuilds `tower`: its own saved hyperparameters (a tower that calls
    `save_hyperparameters`, as `Encoder` does), else None (then `load_from_checkpoint` needs the tower passed in)."""
    if tower is None:
        return None
    hparams = getattr(tower, "hparams", None)
    if not isinstance(tower, L.pytorch.core.mixins.HyperparametersMixin) or hparams is None:
        return None
    return {"class_path": f"{type(tower).__module__}.{type(tower).__qualname__}", "init_args": dict(hparams)}


def build_tower(spec: nn.Module | dict | None) -> nn.Module | None:
    """A tower from an explicit spec {"class_path": "lit_dr.Encoder", "init_args": {...}}, or the module itself."""
    if spec is None or isinstance(spec, nn.Module):
        return spec
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


def save_tower_hparams(module: L.LightningModule, towers: dict[str, nn.Module | dict | None]) -> None:
    """`save_hyperparameters` with the towers as configs: the CLI's config of each (Lightning hands it over), or,
    built from Python, the tower's spec; and the CLI's instantiator in both cases, so `load_from_checkpoint` rebuilds
    the module the same way."""
    with warnings.catch_warnings():  # built from Python the towers are modules: replaced by their specs below
        warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
        # The frame of the objective's `__init__` that called us: Lightning reads the arguments of the chain from it.
        module.save_hyperparameters(frame=sys._getframe(1))
    hp = module.hparams
    if "_instantiator" not in hp:  # built from Python: keep only what a config can say
        for name in ("optimizer", "scheduler"):
            hp.pop(name, None)
        hp["_instantiator"] = INSTANTIATOR
    for name, tower in towers.items():
        if isinstance(hp.get(name), nn.Module) or isinstance(tower, dict) or name not in hp:
            hp[name] = tower if isinstance(tower, dict) else tower_spec(tower)


def tower_state(path: str, shared: bool) -> dict[str, Tensor]:
    """The towers' weights in a Lightning checkpoint, by state-dict names (tensors only: `weights_only=True`, so a
    checkpoint from a stranger cannot run code). `shared`: the module reading it has one tower; a shared-tower LTRe
    checkpoint's frozen document copy is then not one of its towers."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams = checkpoint.get("hyper_parameters", {})
    saved_shared = "doc_encoder" in hparams and hparams["doc_encoder"] is None
    towers = ("encoder.",) if saved_shared and shared else ("encoder.", "doc_encoder.")
    return {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(towers)}


class Checkpointed(L.LightningModule):
    """What every objective does with checkpoints: `load_from_checkpoint` returns the class that was trained, and
    the warm start (`init_checkpoint`) is read once, never by a module restored from its own checkpoint."""

    _warm_started = False  # the warm start was applied, or the weights came from a checkpoint

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, weights_only: bool = True, **kwargs):
        """Lightning's `load_from_checkpoint`, returning the objective that was trained:
        `BiEncoderModule.load_from_checkpoint(ckpt)` of a BM25-negatives run is a `BM25Negatives`, not the base.
        Tensors and plain containers only (`weights_only=True`): loading a checkpoint never runs its code."""
        trained = trained_class(checkpoint_path)
        if trained is not None and trained is not cls and issubclass(trained, cls):
            return trained.load_from_checkpoint(checkpoint_path, *args, weights_only=weights_only, **kwargs)
        checkpoint_path = without_moved_hparams(checkpoint_path)
        return super().load_from_checkpoint(checkpoint_path, *args, weights_only=weights_only, **kwargs)

    def tower_state(self, path: str) -> dict[str, Tensor]:
        """The towers' weights in `path`, by this module's state-dict names."""
        return tower_state(path, shared=getattr(self, "doc_encoder", None) is None)

    def load_tower_weights(self, path: str) -> None:
        missing, unexpected = self.load_state_dict(self.tower_state(path), strict=False)
        missing = [k for k in missing if k.startswith(("encoder.", "doc_encoder."))]
        unexpected = [k for k in unexpected if ".pooler." not in k]  # older checkpoints kept HF's unused pooler
        if missing or unexpected:
            raise ValueError(f"{path}: tower weights do not match this module: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        log.info("initialised towers from %s", path)

    def apply_warm_start(self) -> None:
        """Load `init_checkpoint`'s towers, once: at the start of the first fit (or validate / test / predict) of a
        module built afresh. A module restored from its own checkpoint (`load_from_checkpoint`, a trainer's
        `ckpt_path`) never reads the warm start again: its checkpoint holds every weight."""
        if self._warm_started:
            return
        self._warm_started = True
        resuming = self._trainer is not None and self.trainer.ckpt_path is not None
        if self.hparams.get("init_checkpoint") is not None and not resuming:
            self.load_tower_weights(self.hparams.init_checkpoint)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What export and model cards need from a checkpoint: the class (the CLI records it, Python does not)
        # and the figures of the evaluation that preceded the save.
        checkpoint["lit_dr"] = {"class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                                "last_evaluation": getattr(self, "last_evaluation", None)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._warm_started = True  # the checkpoint's weights, never the warm start's
        self._checkpoint_step = checkpoint.get("global_step")
