"""`validate` / `test` of a checkpoint reuse the corpus embeddings its fit wrote at that step, when they are the
same ones: same document-tower weights (a digest of them), same tokenized corpus, same encoding settings.

A fit records, beside each corpus embedding it makes (`<run>/embeddings/corpus-step<N>/source.json`), what they
were made from. A later evaluation of a checkpoint of that run looks for the record of the checkpoint's step and
adopts the embeddings if every field matches, or logs which field does not (or that they are gone: a fit keeps
only its newest embeddings). The record holds no clock and no path, only what decides the numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from lit_dr.files import atomic_file

log = logging.getLogger(__name__)
RECORD = "source.json"


def weights_digest(module: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of `module`'s state dict, in order."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_record(directory: Path, source: dict) -> None:
    with atomic_file(Path(directory) / RECORD) as f:
        json.dump(source, f, indent=1, sort_keys=True)


def find_reusable(candidates: list[Path], source: dict) -> tuple[Path | None, str]:
    """(the first candidate directory whose record equals `source`, "") or (None, why none does)."""
    why = []
    for directory in candidates:
        record = Path(directory) / RECORD
        if not record.is_file():
            why.append(f"{directory} {'has no ' + RECORD if directory.is_dir() else 'is gone'}")
            continue
        saved = json.loads(record.read_text())
        differ = sorted(k for k in set(saved) | set(source) if saved.get(k) != source.get(k))
        if not differ:
            return Path(directory), ""
        why.append(f"{directory}: {', '.join(differ)} differ")
    return None, "; ".join(why) or "no directory to look in"


def copy_directory(source: Path, target: Path) -> None:
    """`source`'s files as `target` (replaced if there), each a hard link where the file system allows, else a
    copy; written beside `target` and renamed, so an interrupted copy never passes for embeddings."""
    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, copy_function=link_or_copy)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
