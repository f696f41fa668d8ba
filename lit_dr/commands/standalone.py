"""`lit-dr export | index | search | pipeline`: the commands outside the trainer's subcommands (using a trained
model; running fits in stages).

Parsed with jsonargparse, as `fit` is: every option can come from `--config FILE` (a YAML of the same names, the
positional arguments included) and `--print_config` prints the options that would run, as a YAML that `--config`
takes back. Options that mean what a `fit` option means have its name: `--trainer.accelerator`,
`--trainer.devices`, `--trainer.precision`, `--data.eval_batch_size`, `--data.doc_max_length` (index),
`--data.query_max_length` (search), `--data.embedding_dtype`, `--index_factory`, `--search_params`, `--eval_depth`
(fit: `model.init_args.index_factory`, `...search_params`, `...eval_depth`). The earlier short names
(`--devices`, `--accelerator`, `--precision`, `--batch_size`, `--max_length`, `--embedding_dtype`, `--k`) still work.

Dispatched by `lit_dr.commands.cli.main` before LightningCLI is built; heavy imports wait until a command runs,
so `--help` answers at once.
"""

from __future__ import annotations

import sys

COMMANDS = ("export", "index", "search", "pipeline")
MODEL_HELP = "a lit_dr checkpoint (.ckpt) or a sentence-transformers directory (e.g. one `lit-dr export` wrote)"
DESCRIPTIONS = {
    "export": "Write a directory that SentenceTransformer(OUT_DIR) and AutoModel load, with a model card "
              "(README.md): objective, config, data set, dev metrics.",
    "index": "Encode a corpus into embedding files and a FAISS index, sharded over --trainer.devices processes "
             "as evaluation is.",
    "search": "Search an index for queries and write a TREC run, sharded over --trainer.devices processes as "
              "evaluation is.",
}


def parser(command: str):
    """The jsonargparse parser of `lit-dr <command>` (export, index or search)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(prog=f"lit-dr {command}", description=DESCRIPTIONS[command], exit_on_error=False)
    p.add_argument("--config", action=ActionConfigFile,
                   help="a YAML of these options (positional ones included, by name); later options win")
    if command == "export":
        p.add_argument("checkpoint", type=str, help="a lit_dr checkpoint (.ckpt)")
        p.add_argument("out_dir", type=str, help="the directory to write (must not exist, unless --overwrite)")
        p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
        p.add_argument("--onnx", action="store_true",
                       help="also write onnx/model.onnx (sentence-transformers' backend='onnx')")
        p.add_argument("--quantize", action="store_true",
                       help="also write onnx/model_qint8.onnx (int8: on SciFact it lost 0.026 nDCG@10; measure first)")
        p.add_argument("--push_to_hub", type=str | None, default=None, metavar="REPO_ID",
                       help="upload the export to this Hugging Face Hub model repository")
        p.add_argument("--license", type=str | None, default=None,
                       help="the model card's license (default: the base model's)")
        return p
    if command == "index":
        p.add_argument("model", type=str, help=MODEL_HELP)
        p.add_argument("corpus", type=str, help="a corpus file (BEIR .jsonl with _id/title/text, MS MARCO .tsv) or a "
                                                "BEIR / MS MARCO data set directory")
        p.add_argument("out_dir", type=str, help="where embeddings/ (with, not for Flat, its FAISS index), ids.npy "
                                                 "and index.json go")
        p.add_argument("--index_factory", type=str, default="Flat", help="FAISS factory string: Flat (exact, "
                       "streamed over the embedding files: no index file), 'IVF4096,PQ64', HNSW32, ...")
    else:
        p.add_argument("index_dir", type=str, help="a directory written by `lit-dr index`")
        p.add_argument("queries", type=str, help="a queries file (.jsonl / .tsv) or a data set directory")
        p.add_argument("out_file", type=str, help="the TREC run file to write")
        p.add_argument("--model", type=str | None, default=None,
                       help=f"{MODEL_HELP}; default (null): the one that built the index")
        p.add_argument("--split", type=str | None, default=None, help="with a data set directory: search the "
                       "queries judged in this split and print nDCG@10, MRR@10, R@100, R@1000")
        p.add_argument("--eval_depth", "--k", type=int, default=1000,
                       help="documents per query (fit: model.init_args.eval_depth)")
    p.add_argument("--search_params", type=dict[str, int | float] | None, default=None,
                   help="FAISS search parameters of a non-exact index, e.g. '{nprobe: 64}' (IVF) or '{efSearch: 128}' "
                        "(HNSW); " + ("recorded in index.json as the default of `lit-dr search`" if command == "index"
                                      else "default (null): those recorded by `lit-dr index`"))
    p.add_argument("--data.eval_batch_size", "--batch_size", type=int, default=128, help="texts encoded per batch")
    side = "doc" if command == "index" else "query"
    p.add_argument(f"--data.{side}_max_length", "--max_length", type=int | None, default=None,
                   help="tokens kept per text; default (null): the model's training length")
    if command == "index":
        p.add_argument("--data.embedding_dtype", "--embedding_dtype", type=str, default="float32",
                       choices=["float32", "float16"], help="how the embedding files store vectors")
    p.add_argument("--trainer.accelerator", "--accelerator", type=str, default="auto", help="cpu, gpu or auto")
    p.add_argument("--trainer.devices", "--devices", type=int, default=1, help="processes (one per GPU)")
    p.add_argument("--trainer.precision", "--precision", type=str, default="32-true",
                   help="e.g. bf16-mixed on GPUs (ignored on CPU)")
    return p


def parse(command: str, argv: list[str]):
    """The parsed options of `lit-dr <command> ARGV`; a mistake is a `ConfigError` with a "did you mean"."""
    from jsonargparse import ArgumentError

    from lit_dr.commands.errors import ConfigError, one_line

    p = parser(command)
    try:
        args = p.parse_args(argv)
    except ArgumentError as error:
        known = [o.lstrip("-") for a in p._actions for o in a.option_strings if o.startswith("--")]
        raise ConfigError(one_line(str(error), known)) from None
    if args.get("search_params") is not None:
        search_params(args.search_params)
    return args


def search_params(value) -> dict[str, float]:
    """`{nprobe: 64}` -> {"nprobe": 64}; names and numbers only (a YAML or JSON string, or a mapping)."""
    import yaml

    from lit_dr.commands.errors import ConfigError

    parsed = yaml.safe_load(value) if isinstance(value, str) else value
    if not isinstance(parsed, dict) or not all(isinstance(k, str) and isinstance(v, int | float) and
                                               not isinstance(v, bool) for k, v in parsed.items()):
        raise ConfigError(f"--search_params: expected a mapping of names to numbers such as '{{nprobe: 64}}', "
                          f"got {value!r}")
    return dict(parsed)


def processes(trainer):
    """Launch the processes (Lightning Fabric, DDP when devices > 1) and describe this one."""
    import warnings

    from lightning.fabric import Fabric

    from lit_dr.commands.preflight import check_accelerator
    from lit_dr.index.encoding import autocast_on
    from lit_dr.index.search import Processes

    check_accelerator(trainer)
    fabric = Fabric(accelerator=trainer.accelerator, devices=trainer.devices, precision=trainer.precision,
                    strategy="ddp" if trainer.devices > 1 else "auto")
    fabric.launch()
    # Raised by Fabric's own all_gather under torch >= 2.10; nothing a user can act on.
    warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_gather is deprecated")
    procs = Processes(rank=fabric.global_rank, world_size=fabric.world_size, device=fabric.device,
                      all_gather=fabric.all_gather if fabric.world_size > 1 else None, barrier=fabric.barrier)
    return procs, (fabric.autocast if autocast_on(fabric.device) else None)


def check_inputs(command: str, args) -> None:
    """Paths checked before a model loads or a process starts."""
    from pathlib import Path

    from lit_dr.commands.errors import SetupError

    def must_exist(value: str | None, what: str) -> None:
        if value is not None and not Path(value).exists():
            raise SetupError(f"{what} {value}: no such file or directory")

    if command == "export":
        must_exist(args.checkpoint, "checkpoint")
        if Path(args.checkpoint).is_dir():
            raise SetupError(f"checkpoint {args.checkpoint}: is a directory; give a .ckpt file in it")
        if Path(args.out_dir).exists() and not args.overwrite:
            raise SetupError(f"{args.out_dir} exists: choose another directory or pass --overwrite")
    elif command == "index":
        must_exist(args.model, "model")
        must_exist(args.corpus, "corpus")
    else:
        if not (Path(args.index_dir) / "index.json").is_file():
            raise SetupError(f"{Path(args.index_dir) / 'index.json'} missing: {args.index_dir} was not written "
                             "by `lit-dr index`")
        must_exist(args.queries, "queries")
        must_exist(args.model, "model")


def run_command(argv: list[str]) -> None:
    command, rest = argv[0], argv[1:]
    if command == "pipeline":
        from lit_dr.commands.pipeline import pipeline_command

        pipeline_command(rest)
        return
    args = parse(command, rest)
    check_inputs(command, args)
    if command == "export":
        from lit_dr.commands.export import export_checkpoint

        print(export_checkpoint(args.checkpoint, args.out_dir, overwrite=args.overwrite, onnx=args.onnx,
                                quantize=args.quantize, push_to_hub=args.push_to_hub, license=args.license))
        return
    procs, autocast = processes(args.trainer)
    if command == "index":
        from lit_dr.commands.inference import index_corpus

        emb = index_corpus(args.model, args.corpus, args.out_dir, args.index_factory, args.data.eval_batch_size,
                           args.data.doc_max_length, args.data.embedding_dtype, procs, autocast,
                           search_params=args.search_params)
        if procs.rank == 0:
            print(f"indexed {len(emb)} texts ({emb.dim} dimensions, {args.index_factory}) in {args.out_dir}")
        return
    from lit_dr.commands.inference import search_index

    metrics = search_index(args.index_dir, args.queries, args.out_file, args.model, args.eval_depth, args.split,
                           args.data.eval_batch_size, args.data.query_max_length, procs, autocast,
                           search_params=args.search_params)
    if procs.rank == 0:
        print(f"wrote {args.out_file}")
        for name, value in (metrics or {}).items():
            print(f"  {name:<12} {value:.4f}")


if __name__ == "__main__":
    run_command(sys.argv[1:])
