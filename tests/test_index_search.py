"""`lit-dr index` / `lit-dr search`: the rankings and metrics evaluation produces, from a checkpoint or an exported
directory, exact or through a FAISS index file; the run conventions of the trainer commands."""

import json

import lightning as L
import numpy as np
import pytest
import torch

from lit_dr import BM25Negatives, Encoder, RetrievalDataModule
from lit_dr.commands.cli import main
from lit_dr.commands.inference import index_corpus, search_index
from lit_dr.evaluation.metrics import read_trec_run
from lit_dr.index.embeddings import EmbeddingShards


@pytest.fixture(autouse=True)
def _token_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIT_DR_CACHE", str(tmp_path / "token-cache"))  # index/search tokenize into the cache


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_beir, tiny_model_dir):
    """A checkpoint of a tiny model whose data module hyperparameters carry the training lengths."""
    tmp = tmp_path_factory.mktemp("ckpt")
    model = BM25Negatives(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir, projection_dim=16, normalize=True))
    dm = RetrievalDataModule(str(tiny_beir), tokenizer=tiny_model_dir, query_max_length=8, doc_max_length=24,
                             negatives="none", cache_dir=str(tmp / "cache"), show_progress=False)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, max_steps=0,
                        default_root_dir=str(tmp))
    trainer.validate(model, dm, verbose=False)
    trainer.save_checkpoint(tmp / "m.ckpt")
    return tmp / "m.ckpt", dm, trainer.callback_metrics["val/ndcg@10"].item(), model


def test_index_and_search_match_evaluation(checkpoint, tiny_beir, tmp_path):
    ckpt, dm, ndcg, model = checkpoint
    emb = index_corpus(ckpt, tiny_beir, tmp_path / "index", show_progress=False)
    assert len(emb) == len(dm.corpus) and not list((tmp_path / "index").rglob("*.faiss"))  # Flat: no index file
    # The corpus embeddings of evaluation's own mechanism, from the data module's token cache.
    from lit_dr.index.encoding import encode_store

    model.eval()
    expected = encode_store(model.encode_docs, dm.corpus, show_progress=False).numpy()
    np.testing.assert_allclose(np.asarray(emb), expected, atol=1e-5)
    assert list(np.load(tmp_path / "index" / "ids.npy")) == list(dm.corpus.ids)
    # The dev queries of a data set directory (its carved split is not on disk: the test split's judgments are).
    metrics = search_index(tmp_path / "index", tiny_beir, tmp_path / "run.trec", split="train", show_progress=False)
    run = read_trec_run(tmp_path / "run.trec")
    assert len(run) == len(dm.split_rows["train"]) + len(dm.split_rows["dev"])  # every judged training query
    assert all(len(docs) == len(dm.corpus) for docs in run.values())
    assert set(metrics) == {"ndcg@10", "mrr@10", "recall@100", "recall@1000"}
    # Evaluation's figure over the dev queries equals the one computed from this run on the same queries.
    dev = {str(dm.queries.ids[r]) for r in dm.split_rows["dev"]}
    from lit_dr.data.formats import read_qrels
    from lit_dr.evaluation.metrics import trec_eval_metrics

    qrels = {q: r for q, r in read_qrels(tiny_beir / "qrels" / "train.tsv").items() if q in dev}
    assert trec_eval_metrics({q: run[q] for q in dev}, qrels)["ndcg@10"] == pytest.approx(ndcg, abs=1e-6)


def test_exported_model_and_an_ivf_index(checkpoint, tiny_beir, tmp_path):
    ckpt = checkpoint[0]
    main(["export", str(ckpt), str(tmp_path / "exported")])
    index_corpus(ckpt, tiny_beir / "corpus.jsonl", tmp_path / "flat", show_progress=False)
    index_corpus(tmp_path / "exported", tiny_beir / "corpus.jsonl", tmp_path / "ivf", index_factory="IVF4,Flat",
                 show_progress=False)
    a, b = EmbeddingShards(tmp_path / "flat" / "embeddings"), EmbeddingShards(tmp_path / "ivf" / "embeddings")
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)  # same lengths, same vectors
    assert json.loads((tmp_path / "ivf" / "index.json").read_text())["max_length"] == 24
    queries = tiny_beir / "queries.jsonl"
    search_index(tmp_path / "flat", queries, tmp_path / "flat.trec", k=5, show_progress=False)
    main(["search", str(tmp_path / "ivf"), str(queries), str(tmp_path / "ivf.trec"), "--k", "5"])
    flat, ivf = read_trec_run(tmp_path / "flat.trec"), read_trec_run(tmp_path / "ivf.trec")
    assert flat.keys() == ivf.keys() and all(len(d) == 5 for d in flat.values())
    overlap = np.mean([len(flat[q].keys() & ivf[q].keys()) / 5 for q in flat])
    assert overlap > 0.5  # IVF is approximate, but the same vectors: mostly the same documents


def test_plain_jsonl_corpus_and_clear_errors(checkpoint, tmp_path):
    ckpt = checkpoint[0]
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"t{i % 8}w1 t{i % 8}w2"}) + "\n" for i in range(5)))
    index_corpus(ckpt, corpus, tmp_path / "index", show_progress=False)
    queries = tmp_path / "q.tsv"
    queries.write_text("q1\tt3w1 t3w2\n")
    search_index(tmp_path / "index", queries, tmp_path / "run.trec", k=2, show_progress=False)
    assert list(read_trec_run(tmp_path / "run.trec")["q1"])[0] == "d3"
    with pytest.raises(FileNotFoundError, match="index.json"):
        search_index(tmp_path, queries, tmp_path / "x.trec")
    with pytest.raises(FileNotFoundError, match="neither a lit_dr checkpoint"):
        index_corpus(tmp_path, corpus, tmp_path / "y")


def test_help_of_the_commands(capsys):
    for command in ("export", "index", "search"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        assert f"usage: lit-dr {command}" in capsys.readouterr().out


def tiny_fit_args(tiny_beir, tiny_model_dir, *extra):
    return ["--model", "lit_dr.BM25Negatives", "--model.init_args.encoder", "lit_dr.Encoder",
            "--model.init_args.optimizer=torch.optim.AdamW",
            f"--model.init_args.encoder.init_args.model_name_or_path={tiny_model_dir}",
            f"--data.dataset={tiny_beir}", "--data.train_batch_size=8", "--data.show_progress=false",
            "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger", *extra]


def test_default_root_dir_places_the_run_and_the_command_line_wins(tiny_beir, tiny_model_dir, cache_dir, tmp_path):
    from lit_dr.commands.cli import run

    cli = run(["fit", *tiny_fit_args(tiny_beir, tiny_model_dir), f"--trainer.default_root_dir={tmp_path / 'root'}"])
    ckpt = torch.load(cli.trainer.checkpoint_callback.best_model_path, weights_only=True, mmap=True)
    run_dir = tmp_path / "root" / "version_0"  # the logger's save_dir was not given: the root is
    assert cli.trainer.checkpoint_callback.dirpath == str(run_dir / "checkpoints")
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file()
    steps = ckpt["global_step"]
    assert steps > 0
    records = [json.loads(line) for line in (run_dir / "runs" / "evaluations.jsonl").read_text().splitlines()]
    assert records[-1]["split"] == "dev" and records[-1]["step"] == steps
    # validate from the checkpoint: its run_dir is this command's, and the run file carries the weights' step.
    out = tmp_path / "validate-runs"
    run(["validate", *tiny_fit_args(tiny_beir, tiny_model_dir), f"--trainer.default_root_dir={tmp_path / 'v'}",
         "--ckpt_path", cli.trainer.checkpoint_callback.best_model_path, f"--model.init_args.run_dir={out}",
         "--model.init_args.eval_depth=7"])
    run_file = out / f"dev-step{steps:07d}.trec"
    assert run_file.is_file()
    assert all(len(docs) == 7 for docs in read_trec_run(run_file).values())
