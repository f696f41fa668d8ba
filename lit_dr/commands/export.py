"""A trained checkpoint as a sentence-transformers directory (which `transformers.AutoModel` also loads), with a
model card: `lit-dr export CKPT OUT_DIR`, or `export_checkpoint(ckpt, out_dir)` from Python.

The directory holds the modules lit_dr's `Encoder` applies, in its order: Transformer -> Pooling (cls / mean) ->
Dense (no activation) -> LayerNorm (the optional projection) -> Normalize (when the tower normalises). A model
with a separate document tower becomes a sentence-transformers `Router` with a "query" and a "document" route.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from lit_dr.models.encoder import Encoder


def st_models():
    """sentence-transformers' module classes (`sentence_transformer.modules` since v6, `models` before)."""
    try:
        from sentence_transformers.sentence_transformer import modules
    except ImportError:
        from sentence_transformers import models as modules
    return modules


def per_task_lengths() -> bool:
    """Whether the installed sentence-transformers truncates queries and documents at lengths of their own."""
    import inspect

    return "query_length" in inspect.signature(st_models().Transformer.__init__).parameters


def hf_backbone(encoder: Encoder):
    """A float32 copy of the tower's transformer as `AutoModel` rebuilds it, so loading it warns of nothing.

    lit_dr drops BERT's pooler (it pools token states itself); `AutoModel.from_pretrained` would then report the
    pooler as newly initialised. The copy carries it as zeros: `pooler_output` is 0, never random, and unused.
    """
    from transformers import AutoModel

    model = AutoModel.from_config(encoder.model.config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(encoder.model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise ValueError(f"the tower's weights do not fit {type(model).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name in missing:
            model.get_parameter(name).zero_()
    return model.float().eval()


def st_modules(encoder: Encoder, workdir: Path, max_length: int | None, query_length: int | None = None,
               document_length: int | None = None) -> list:
    """The sentence-transformers modules equal to `encoder` (their weights copied), its transformer saved under
    `workdir`. `query_length` / `document_length`: per-task truncation, where the installed version has it."""
    from transformers import AutoTokenizer

    models = st_models()
    hf_backbone(encoder).save_pretrained(workdir)
    AutoTokenizer.from_pretrained(encoder.tokenizer_path).save_pretrained(workdir)
    per_task = {"query_length": query_length, "document_length": document_length}
    extra = {k: v for k, v in per_task.items() if v is not None} if per_task_lengths() else {}
    modules = [models.Transformer(str(workdir), max_seq_length=max_length, **extra)]
    hidden = encoder.model.config.hidden_size
    modules.append(models.Pooling(hidden, pooling_mode=encoder.pooling))
    if encoder.projection is not None:
        linear, norm = encoder.projection
        dense = models.Dense(hidden, linear.out_features, activation_function=None)
        dense.linear.load_state_dict(linear.state_dict())
        layer_norm = models.LayerNorm(linear.out_features)
        layer_norm.norm.load_state_dict(norm.state_dict())
        modules += [dense, layer_norm]
    if encoder.normalize:
        modules.append(models.Normalize())
    for m in modules:
        m.float()
    return modules


def sentence_transformer(module, query_length: int | None, doc_length: int | None, workdir: Path):
    """The `SentenceTransformer` that embeds as `module` (a `BiEncoderModule`) does, on the CPU in float32."""
    from sentence_transformers import SentenceTransformer

    models = st_models()
    similarity = "cosine" if module.encoder.normalize else "dot"
    if module.doc_encoder is None:
        mods = st_modules(module.encoder, workdir / "tower", doc_length, query_length, doc_length)
        return SentenceTransformer(modules=mods, similarity_fn_name=similarity, device="cpu")
    if not hasattr(models, "Router"):
        import sentence_transformers

        raise RuntimeError(f"a model with a separate document tower exports as a sentence-transformers Router, "
                           f"which sentence-transformers {sentence_transformers.__version__} lacks: "
                           "pip install 'sentence-transformers>=5'")
    router = models.Router.for_query_document(
        query_modules=st_modules(module.encoder, workdir / "query", query_length),
        document_modules=st_modules(module.doc_encoder, workdir / "document", doc_length),
    )
    return SentenceTransformer(modules=[router], similarity_fn_name=similarity, device="cpu")


def load_module(checkpoint_path: str | Path):
    """The trained module, float32 on the CPU, in eval mode, with the document tower its evaluation used.

    The checkpoint holds every weight (`weights_only=True`; its warm start is never read). LTRe trains the query
    tower only; with a shared tower its documents are embedded by the warm start's tower, which LTRe keeps,
    frozen, as its document tower."""
    from lit_dr.objectives.base import BiEncoderModule
    from lit_dr.objectives.ltre import LTRe

    hparams = read_checkpoint_facts(checkpoint_path)["hyper_parameters"]
    module = BiEncoderModule.load_from_checkpoint(checkpoint_path, map_location="cpu", weights_only=True)
    if isinstance(module, LTRe) and hparams.get("doc_encoder") is None and hparams.get("doc_embeddings"):
        raise ValueError(f"this LTRe model searches the document embeddings {hparams['doc_embeddings']!r}, not "
                         "ones embedded by a tower in its checkpoint: there is no document tower to export")
    return module.float().eval()


def read_checkpoint_facts(checkpoint_path: str | Path) -> dict[str, Any]:
    """What a model card says about a checkpoint: step, epoch, data hyperparameters, the monitored dev score and
    the evaluation that preceded the save (lit_dr's own record)."""
    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    monitored = {}
    for key, state in (ckpt.get("callbacks") or {}).items():
        if key.startswith("ModelCheckpoint") and state.get("monitor") and state.get("current_score") is not None:
            monitored[state["monitor"]] = float(state["current_score"])
    return {
        "global_step": int(ckpt.get("global_step", 0)),
        "epoch": int(ckpt.get("epoch", 0)),
        "hyper_parameters": dict(ckpt.get("hyper_parameters") or {}),
        "data": dict(ckpt.get("datamodule_hyper_parameters") or {}),
        "monitored": monitored,
        "last_evaluation": (ckpt.get("lit_dr") or {}).get("last_evaluation"),
    }


def resolved_config(checkpoint_path: str | Path, facts: dict[str, Any]) -> str:
    """The run's fully resolved `config.yaml` (the CLI writes it beside `checkpoints/`), else the checkpoint's
    model and data hyperparameters as YAML."""
    import yaml

    written = Path(checkpoint_path).resolve().parent.parent / "config.yaml"
    if written.is_file():
        return written.read_text()
    hparams = {k: v for k, v in facts["hyper_parameters"].items() if not k.startswith("_")}
    return yaml.safe_dump({"model": hparams, "data": facts["data"]}, sort_keys=False)


def model_card(module, facts: dict[str, Any], config: str, query_length: int | None, doc_length: int | None,
               out_dir: Path, license_: str | None = None) -> str:
    """README.md of an exported model: the Hub's metadata (`export_hub.card_metadata`), objective, how to load it,
    the architecture, data, dev metrics, config."""
    cls = type(module)
    doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
    towers = [("query and document", module.encoder)] if module.doc_encoder is None else [
        ("query", module.encoder), ("document", module.doc_encoder)]
    arch = "\n".join(
        f"- {side} tower: `{t.model_name_or_path}`, {t.pooling} pooling"
        + (f", Linear({t.model.config.hidden_size}, {t.dim}) + LayerNorm" if t.projection is not None else "")
        + (", L2-normalised" if t.normalize else "") + f", {t.dim} dimensions"
        for side, t in towers)
    lengths = (f"queries {query_length} tokens, documents {doc_length} tokens, as in training"
               if query_length and doc_length else "the tokenizer's maximum length: the checkpoint records no "
               "training lengths; set `model.max_seq_length` to change it")
    if module.doc_encoder is None:
        note = f"One tower encodes queries and documents ({lengths})."
        if query_length and doc_length and query_length != doc_length:
            note += (" `encode_query` truncates at the query length, `encode_document` and `encode` at the "
                     "document length." if per_task_lengths() else
                     f" This sentence-transformers version has one length for both: `encode` truncates at "
                     f"{doc_length}; set `model.max_seq_length = {query_length}` before encoding queries.")
        hf = (f"AutoModel.from_pretrained(\"{out_dir}\")  # the transformer; pool as above ({module.encoder.pooling})")
    else:
        note = (f"Two towers, as a sentence-transformers `Router`: `encode_query` uses the query tower, "
                f"`encode_document` and `encode` the document tower ({lengths}).")
        hf = (f"AutoModel.from_pretrained(\"{out_dir}/query_0_Transformer\")  # and document_0_Transformer; "
              "pool as above")
    data = facts["data"]
    dataset = data.get("dataset", "unknown (not trained through a RetrievalDataModule)")
    rows = []
    last = facts["last_evaluation"]
    if last:
        rows += [f"| {last['split']} {k} | {v:.4f} | step {last['step']} |" for k, v in last["metrics"].items()]
    rows += [f"| {k} (checkpoint's monitor) | {v:.4f} | step {facts['global_step']} |"
             for k, v in facts["monitored"].items()]
    metrics = "\n".join(["| metric | value | at |", "| --- | --- | --- |", *rows]) if rows else "No evaluation recorded."
    from lit_dr.commands.export_hub import card_metadata, front_matter

    return f"""{front_matter(card_metadata(module, facts, license_))}
# {cls.__name__} retriever trained with lit_dr

Objective: `{cls.__module__}.{cls.__qualname__}`: {doc}

Trained for {facts['global_step']} optimizer steps on `{dataset}`.
Similarity: {'cosine' if module.encoder.normalize else 'dot product'}.

## Use

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{out_dir}")
q = model.encode_query(["a question"])
d = model.encode_document(["a passage"])
scores = model.similarity(q, d)
```

{note}

With transformers alone: `{hf}`, then apply the modules listed in `modules.json` (pooling, projection,
normalisation).{onnx_note(out_dir)}

## Architecture

{arch}

## Dev metrics of this checkpoint

{metrics}

## Training configuration

```yaml
{config.rstrip()}
```
"""


def onnx_note(out_dir: Path) -> str:
    return f"""

ONNX Runtime (with `export --onnx`; `pip install sentence-transformers[onnx]`):
`SentenceTransformer("{out_dir}", backend="onnx")`; int8 (with `--quantize`; it cost 0.026 dev nDCG@10 on
SciFact, measure before use): add `model_kwargs={{"file_name": "model_qint8.onnx"}}`.
Upload to the Hub: `hf upload REPO_ID {out_dir} .` (or `export --push_to_hub REPO_ID`)."""


def export_checkpoint(checkpoint_path: str | Path, out_dir: str | Path, overwrite: bool = False, onnx: bool = False,
                      quantize: bool = False, push_to_hub: str | None = None, license: str | None = None) -> Path:
    """Write a sentence-transformers directory for a lit_dr checkpoint, with a model card (README.md).

    Query and document max lengths are the training data module's; a checkpoint without them keeps the
    tokenizer's. The directory is written beside `out_dir` and renamed into place, so a failure leaves nothing.
    `onnx`: also `onnx/model.onnx` for sentence-transformers' `backend="onnx"` (`export_hub.export_onnx`),
    `quantize`: and its int8 copy `onnx/model_qint8.onnx`; `push_to_hub`: then upload it to that Hub repository;
    `license`: the card's license (default: the base model's).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists: choose another directory or pass overwrite=True (--overwrite)")
    module = load_module(checkpoint_path)
    facts = read_checkpoint_facts(checkpoint_path)
    query_length, doc_length = facts["data"].get("query_max_length"), facts["data"].get("doc_max_length")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model = sentence_transformer(module, query_length, doc_length, work / "towers")
        staged = work / "model"
        model.save(str(staged))
        card = model_card(module, facts, resolved_config(checkpoint_path, facts), query_length, doc_length, out_dir,
                          license)
        (staged / "README.md").write_text(card)
        if onnx or quantize:
            from lit_dr.commands.export_hub import export_onnx, quantize_onnx

            export_onnx(staged)
            if quantize:
                quantize_onnx(staged)
        with open(staged / "lit_dr_export.json", "w") as f:
            json.dump({"checkpoint": str(Path(checkpoint_path).resolve()), "global_step": facts["global_step"],
                       "query_max_length": query_length, "doc_max_length": doc_length}, f, indent=1)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staged.rename(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if push_to_hub:
        from lit_dr.commands.export_hub import push_to_hub as upload

        print(f"uploaded {out_dir} to {push_to_hub}: {upload(out_dir, push_to_hub)}")
    return out_dir
