"""What an export needs beyond the sentence-transformers directory: the Hub's model-card metadata, an ONNX graph
that sentence-transformers' `backend="onnx"` loads, and an upload to the Hub.

- `card_metadata`: the YAML front matter of README.md in the Hub's format (license, base_model, datasets,
  metrics and a `model-index` with the dev results), read from the checkpoint's facts and the base model's card.
- `export_onnx(out_dir)`: `onnx/model.onnx`, the transformer's `last_hidden_state` for `input_ids`,
  `attention_mask` (and `token_type_ids`) with dynamic batch and length, the file and layout that
  `SentenceTransformer(out_dir, backend="onnx")` loads (pooling, projection and normalisation stay the
  sentence-transformers modules they are); `quantize_onnx` adds `onnx/model_qint8.onnx` (dynamic int8 weights),
  loaded with `model_kwargs={"file_name": "model_qint8.onnx"}`.
- `push_to_hub(out_dir, repo_id)`: creates the repository and uploads the directory (huggingface_hub); the
  same by hand is one line, `hf upload REPO_ID OUT_DIR .`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lit_dr.data.formats import _NAME

ONNX_FILE = "onnx/model.onnx"


def _front_matter(readme: Path) -> dict[str, Any]:
    import yaml

    if not readme.is_file():
        return {}
    match = re.match(r"---\n(.*?)\n---\n", readme.read_text(encoding="utf-8"), re.S)
    try:
        return (yaml.safe_load(match.group(1)) or {}) if match else {}
    except yaml.YAMLError:
        return {}


def base_model_facts(name_or_path: str) -> tuple[str | None, str | None]:
    """(base_model id for the Hub, its license) of a tower's `model_name_or_path`: a hub id is its own base model,
    the packaged MiniLM is sentence-transformers/all-MiniLM-L6-v2; a local directory has no hub id. The license
    is the one the base model's own card declares."""
    from lit_dr.models.encoder import PACKAGED_MINILM, resolve_model_path

    path = Path(resolve_model_path(name_or_path))
    hub_id = None
    if name_or_path in PACKAGED_MINILM:
        hub_id = "sentence-transformers/all-MiniLM-L6-v2"
    elif not Path(name_or_path).expanduser().exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path):
        hub_id = name_or_path
    license_ = _front_matter(path / "README.md").get("license") if path.is_dir() else None
    return hub_id, license_


def card_metadata(module, facts: dict[str, Any], license_: str | None = None) -> dict[str, Any]:
    """The Hub's model-card metadata of an export. A BEIR set named by name is the Hub's `BeIR/<name>`; a data set
    given as a path is local and is not listed."""
    base, base_license = base_model_facts(module.encoder.model_name_or_path)
    dataset = str(facts["data"].get("dataset") or "")
    hub_dataset = f"BeIR/{dataset}" if _NAME.fullmatch(dataset) and "/" not in dataset else None
    meta: dict[str, Any] = {
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "tags": ["sentence-transformers", "feature-extraction", "dense-retrieval", "lit_dr"],
        "license": license_ or base_license or "other",
    }
    if base:
        meta["base_model"] = base
    if hub_dataset:
        meta["datasets"] = [hub_dataset]
    results = []
    last = facts.get("last_evaluation")
    if last:
        results = [{"type": re.sub(r"[^a-z0-9]+", "_", k.lower()).strip("_"), "name": f"{last['split']} {k}",
                    "value": round(float(v), 6)} for k, v in last["metrics"].items()]
    if results:
        meta["metrics"] = sorted({r["type"] for r in results})
        data = {"name": dataset or "unknown", "type": hub_dataset or dataset or "unknown", "split": last["split"]}
        meta["model-index"] = [{"name": f"{type(module).__name__} (lit_dr)", "results": [
            {"task": {"type": "retrieval", "name": "Retrieval"}, "dataset": data, "metrics": results}]}]
    return meta


def front_matter(meta: dict[str, Any]) -> str:
    import yaml

    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def export_onnx(out_dir: str | Path, opset: int = 18) -> Path:
    """Write `onnx/model.onnx` of the transformer of a single-tower export in `out_dir` (torch.onnx's dynamo
    exporter: the TorchScript one mis-traces transformers 5's attention masks), one file, no external data."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    out_dir = Path(out_dir)
    if not (out_dir / "config.json").is_file():
        raise ValueError(f"{out_dir}: ONNX export is for single-tower models (config.json at the top); a two-tower "
                         "Router export has one transformer per route")
    model = AutoModel.from_pretrained(str(out_dir), attn_implementation="eager").float().eval()
    names = [n for n in AutoTokenizer.from_pretrained(str(out_dir)).model_input_names
             if n in ("input_ids", "attention_mask", "token_type_ids")]

    class Hidden(torch.nn.Module):  # named inputs in, last_hidden_state out: what optimum's ORTModel feeds and reads
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kw = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state

    if not {"input_ids", "attention_mask"} <= set(names):
        raise ValueError(f"{out_dir}: ONNX export expects a tokenizer giving input_ids and attention_mask, got {names}")
    example = {n: torch.ones(2, 8, dtype=torch.long) if n != "token_type_ids" else torch.zeros(2, 8, dtype=torch.long)
               for n in names}
    batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence", max=model.config.max_position_embeddings)
    target = out_dir / ONNX_FILE
    target.parent.mkdir(exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(Hidden().eval(), (), str(target), kwargs=example, dynamo=True, opset_version=opset,
                          input_names=names, output_names=["last_hidden_state"], external_data=False,
                          dynamic_shapes={n: {0: batch, 1: length} for n in names}, verbose=False)
    return target


def quantize_onnx(out_dir: str | Path) -> Path:
    """`onnx/model_qint8.onnx`: onnxruntime's dynamic quantization (int8 weights, activations quantized per call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = Path(out_dir) / ONNX_FILE
    target = source.with_name("model_qint8.onnx")
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    return target


def push_to_hub(out_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload an export to the Hub (creating the model repository); returns the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(out_dir), repo_type="model",
                             commit_message="lit_dr export")
    return str(getattr(info, "commit_url", info))
