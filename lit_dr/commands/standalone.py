"""`lit-dr export | index | search | pipeline`: the commands outside the trainer's subcommands (using a trained
model; running fits in stages).

Parsed with argparse and dispatched by `lit_dr.commands.cli.main` before LightningCLI is built; heavy imports wait until a
command runs, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import sys

COMMANDS = ("export", "index", "search", "pipeline")
MODEL_HELP = "a lit_dr checkpoint (.ckpt) or a sentence-transformers directory (e.g. one `lit-dr export` wrote)"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="lit-dr", description="Use a trained retriever, or train in stages.")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="write a sentence-transformers / Hugging Face directory with a model card",
                       description="Write a directory that SentenceTransformer(OUT_DIR) and AutoModel load, with "
                                   "a model card (README.md): objective, config, data set, dev metrics.")
    p.add_argument("checkpoint", help="a lit_dr checkpoint (.ckpt)")
    p.add_argument("out_dir")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")

    for name, text in (("index", "encode a corpus into embedding files and a FAISS index"),
                       ("search", "search an index for queries and write a TREC run")):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ", sharded over "
                           "--devices processes as evaluation is.")
        if name == "index":
            p.add_argument("model", help=MODEL_HELP)
            p.add_argument("corpus", help="a corpus file (BEIR .jsonl with _id/title/text, MS MARCO .tsv) or a "
                                          "BEIR / MS MARCO data set directory")
            p.add_argument("out_dir", help="where embeddings/ (with, not for Flat, its FAISS index), ids.npy and index.json go")
            p.add_argument("--index_factory", default="Flat", help="FAISS factory string: Flat (exact, streamed "
                           "over the embedding files: no index file), 'IVF4096,PQ64', HNSW32, ... (default Flat)")
            p.add_argument("--embedding_dtype", choices=("float32", "float16"), default="float32")
        else:
            p.add_argument("index_dir", help="a directory written by `lit-dr index`")
            p.add_argument("queries", help="a queries file (.jsonl / .tsv) or a data set directory")
            p.add_argument("out_file", help="the TREC run file to write")
            p.add_argument("--model", help=f"{MODEL_HELP}; default: the one that built the index")
            p.add_argument("--split", help="with a data set directory: search the queries judged in this split "
                                           "and print nDCG@10, MRR@10, R@100, R@1000")
            p.add_argument("--k", type=int, default=1000, help="documents per query (default 1000)")
        p.add_argument("--search_params", type=search_params, help="FAISS search parameters of a non-exact index, "
                       "e.g. '{nprobe: 64}' (IVF) or '{efSearch: 128}' (HNSW); "
                       + ("recorded in index.json as the default of `lit-dr search`" if name == "index"
                          else "default: those recorded by `lit-dr index`"))
        p.add_argument("--batch_size", type=int, default=128)
        p.add_argument("--max_length", type=int, help="tokens kept per text (default: the training length)")
        p.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default)")
        p.add_argument("--devices", type=int, default=1, help="processes (one per GPU); default 1")
        p.add_argument("--precision", default="32-true", help="e.g. bf16-mixed on GPUs (ignored on CPU)")

    # allow_abbrev off: the fit options passed through must never be taken for an abbreviated --dry_run.
    p = sub.add_parser("pipeline", allow_abbrev=False, help="run fits in stages, each warm-started from an earlier "
                       "stage's best checkpoint", usage="lit-dr pipeline [-h] [--dry_run] PIPELINE_YAML "
                       "[--key=value ...]", description="Run the stages of PIPELINE_YAML (e.g. "
                       "configs/pipelines/gpu.yaml) as `lit-dr fit` processes in order; stages with a fit.json are "
                       "skipped. Options --key=value after it are added to every stage's fit.")
    p.add_argument("pipeline", metavar="PIPELINE_YAML", help="its paths are relative to the current directory")
    p.add_argument("--dry_run", action="store_true", help="print each stage's command and run nothing")
    return top


def search_params(text: str) -> dict[str, float]:
    """`--search_params '{nprobe: 64}'` (YAML or JSON) -> {"nprobe": 64}; names and numbers only."""
    import yaml

    value = yaml.safe_load(text)
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, int | float) and
                                              not isinstance(v, bool) for k, v in value.items()):
        raise argparse.ArgumentTypeError(f"expected a mapping of names to numbers such as '{{nprobe: 64}}', got {text!r}")
    return value


def processes(args):
    """Launch the processes (Lightning Fabric, DDP when --devices > 1) and describe this one."""
    import warnings

    from lightning.fabric import Fabric

    from lit_dr.index.encoding import autocast_on
    from lit_dr.index.search import Processes

    fabric = Fabric(accelerator=args.accelerator, devices=args.devices, precision=args.precision,
                    strategy="ddp" if args.devices > 1 else "auto")
    fabric.launch()
    # Raised by Fabric's own all_gather under torch >= 2.10; nothing a user can act on.
    warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_gather is deprecated")
    procs = Processes(rank=fabric.global_rank, world_size=fabric.world_size, device=fabric.device,
                      all_gather=fabric.all_gather if fabric.world_size > 1 else None, barrier=fabric.barrier)
    return procs, (fabric.autocast if autocast_on(fabric.device) else None)


def run_command(argv: list[str]) -> None:
    top = parser()
    args, extra = top.parse_known_args(argv)
    if args.command == "pipeline":
        from lit_dr.commands.pipeline import PipelineError, run_pipeline

        try:
            run_pipeline(args.pipeline, extra, dry_run=args.dry_run)
        except (ValueError, PipelineError) as error:  # a mistake in the YAML or a failed stage: no traceback
            sys.exit(f"lit-dr pipeline: {error}")
        return
    if extra:
        top.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "export":
        from lit_dr.commands.export import export_checkpoint

        print(export_checkpoint(args.checkpoint, args.out_dir, overwrite=args.overwrite))
        return
    procs, autocast = processes(args)
    if args.command == "index":
        from lit_dr.commands.inference import index_corpus

        emb = index_corpus(args.model, args.corpus, args.out_dir, args.index_factory, args.batch_size,
                           args.max_length, args.embedding_dtype, procs, autocast, search_params=args.search_params)
        if procs.rank == 0:
            print(f"indexed {len(emb)} texts ({emb.dim} dimensions, {args.index_factory}) in {args.out_dir}")
        return
    from lit_dr.commands.inference import search_index

    metrics = search_index(args.index_dir, args.queries, args.out_file, args.model, args.k, args.split,
                           args.batch_size, args.max_length, procs, autocast, search_params=args.search_params)
    if procs.rank == 0:
        print(f"wrote {args.out_file}")
        for name, value in (metrics or {}).items():
            print(f"  {name:<12} {value:.4f}")


if __name__ == "__main__":
    run_command(sys.argv[1:])
