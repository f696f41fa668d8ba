"""ONNX out: an export's onnx/model.onnx embeds as lit_dr does (through onnxruntime, and through
sentence-transformers' backend="onnx" where optimum is installed), the model card carries the Hub's metadata,
and --push_to_hub calls the Hub's upload API."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from test_export import cosines, lit_dr_embeddings, trained  # noqa: F401 (trained: a fixture)

from lit_dr import BiEncoderModule
from lit_dr.commands.export import export_checkpoint
from lit_dr.commands.export_hub import push_to_hub
from lit_dr.data.formats import iter_texts

ort = pytest.importorskip("onnxruntime", reason="the onnx extra: pip install 'lit-dr[onnx]'")
pytest.importorskip("onnxscript", reason="the onnx extra: pip install 'lit-dr[onnx]'")


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):  # noqa: F811
    return export_checkpoint(trained[0], tmp_path_factory.mktemp("onnx") / "exported", onnx=True, quantize=True)


def onnx_embed(out, texts: list[str], max_length: int, file_name: str = "model.onnx") -> np.ndarray:
    """What sentence-transformers' ONNX backend computes: the graph's token states, then the export's own
    pooling / projection / normalisation modules."""
    import sentence_transformers as st
    import torch

    model = st.SentenceTransformer(str(out), device="cpu")
    session = ort.InferenceSession(str(out / "onnx" / file_name), providers=["CPUExecutionProvider"])
    tokens = model.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    feeds = {i.name: tokens[i.name].astype(np.int64) for i in session.get_inputs()}
    hidden = session.run(["last_hidden_state"], feeds)[0]
    features = {"token_embeddings": torch.from_numpy(hidden),
                "attention_mask": torch.from_numpy(tokens["attention_mask"])}
    with torch.no_grad():
        for module in list(model)[1:]:
            features = module(features)
    return features["sentence_embedding"].numpy()


@pytest.mark.slow  # a CLI fit and a dynamo ONNX export: about 100 s here
def test_onnx_graph_embeds_as_lit_dr(trained, exported, tiny_beir, tiny_model_dir, tmp_path, monkeypatch):  # noqa: F811
    module = BiEncoderModule.load_from_checkpoint(trained[0]).eval()
    queries, docs = lit_dr_embeddings(module, tiny_beir, tiny_model_dir, tmp_path, monkeypatch)
    doc_texts = [r.text for r in iter_texts(tiny_beir / "corpus.jsonl")]
    assert cosines(onnx_embed(exported, doc_texts, 12), docs).min() >= 0.9999
    query_texts = [r.text for r in iter_texts(tiny_beir / "queries.jsonl")]
    assert cosines(onnx_embed(exported, query_texts, 4), queries).min() >= 0.9999
    # int8: close, not equal (its parity on real data: benchmarks/onnx_throughput.py)
    assert cosines(onnx_embed(exported, doc_texts, 12, "model_qint8.onnx"), docs).min() > 0.5


@pytest.mark.slow
def test_sentence_transformers_onnx_backend_loads_the_export(trained, exported, tiny_beir, tiny_model_dir,  # noqa: F811
                                                             tmp_path, monkeypatch):
    try:
        import optimum.onnxruntime  # noqa: F401
    except ImportError as e:  # optimum-onnx 0.1 needs transformers < 4.58 (see docs/your-data.md)
        pytest.skip(f"sentence-transformers' ONNX backend needs optimum-onnx[onnxruntime]: {e}")
    import sentence_transformers as st

    model = st.SentenceTransformer(str(exported), backend="onnx", device="cpu")
    module = BiEncoderModule.load_from_checkpoint(trained[0]).eval()
    queries, docs = lit_dr_embeddings(module, tiny_beir, tiny_model_dir, tmp_path, monkeypatch)
    doc_texts = [r.text for r in iter_texts(tiny_beir / "corpus.jsonl")]
    query_texts = [r.text for r in iter_texts(tiny_beir / "queries.jsonl")]
    assert cosines(model.encode_document(doc_texts), docs).min() >= 0.9999
    assert cosines(model.encode_query(query_texts), queries).min() >= 0.9999


@pytest.mark.slow
def test_model_card_has_the_hub_metadata(trained, exported):  # noqa: F811
    card = (exported / "README.md").read_text()
    meta = yaml.safe_load(re.match(r"---\n(.*?)\n---\n", card, re.S).group(1))
    assert meta["library_name"] == "sentence-transformers" and meta["license"] == "other"  # tiny BERT: no card
    assert "base_model" not in meta and "datasets" not in meta  # a local model and a local data set
    assert meta["metrics"] == ["ndcg_10", "recall_100"] or "ndcg_10" in meta["metrics"]
    (result,) = meta["model-index"][0]["results"]
    ndcg = next(m for m in result["metrics"] if m["type"] == "ndcg_10")
    assert ndcg["value"] == pytest.approx(trained[1], abs=1e-6) and result["dataset"]["split"] == "dev"
    assert 'backend="onnx"' in card and "hf upload REPO_ID" in card


def test_card_metadata_of_a_hub_base_model_and_a_beir_name():
    from lit_dr.commands.export_hub import card_metadata

    class Module:  # what card_metadata reads of a module
        class encoder:
            model_name_or_path = "sentence-transformers/all-MiniLM-L6-v2"

    facts = {"data": {"dataset": "scifact"}, "last_evaluation": {"split": "dev", "step": 3,
                                                                 "metrics": {"ndcg@10": 0.71}}}
    meta = card_metadata(Module(), facts)
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["license"] == "apache-2.0"  # from the packaged MiniLM's own card
    assert meta["datasets"] == ["BeIR/scifact"] and meta["metrics"] == ["ndcg_10"]


def test_push_to_hub_calls_the_upload_api(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw))
            return type("Info", (), {"commit_url": "https://huggingface.co/me/model/commit/abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    (tmp_path / "README.md").write_text("card")
    assert push_to_hub(tmp_path, "me/model") == "https://huggingface.co/me/model/commit/abc"
    assert calls[1] == ("create_repo", "me/model", {"repo_type": "model", "private": False, "exist_ok": True})
    assert calls[2][1]["folder_path"] == str(tmp_path) and calls[2][1]["repo_id"] == "me/model"
