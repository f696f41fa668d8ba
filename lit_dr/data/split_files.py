"""A split's queries and judgments as files of their own, in BEIR's format: what a fit evaluated on travels with its
run (`<run>/dev/queries.jsonl`, `<run>/dev/qrels.tsv`), so a dev split carved at run time can be scored again
later (`lit-dr search INDEX <run>/dev OUT.trec`), by lit_dr or any BEIR tool."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from lit_dr.files import atomic_file

QUERIES, QRELS, ABOUT = "queries.jsonl", "qrels.tsv", "split.json"


def is_split_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / QUERIES).is_file() and (path / QRELS).is_file()


def qrels_file(path: str | Path, option: str) -> Path:
    """The qrels TSV `path` names: the file itself, or a split folder's `qrels.tsv` (a run's `dev/`). `option`
    names the setting in the error when there is none."""
    given = Path(path).expanduser()
    found = given / QRELS if given.is_dir() else given
    if not found.is_file():
        raise FileNotFoundError(f"{option}={path}: no such qrels file" + (
            f" ({given} is a folder without {QRELS})" if given.is_dir() else ""))
    return found


def write_split(directory: str | Path, queries: Iterable[tuple[str, str]], judgments: dict[str, dict[str, int]],
                about: dict | None = None) -> Path:
    """Write `queries` ((id, text) pairs) and `judgments` ({query id: {document id: grade}}, every grade kept) under
    `directory`, each file atomically, and `about` (where the split came from) as split.json."""
    directory = Path(directory)
    with atomic_file(directory / QUERIES) as f:
        for qid, text in queries:
            f.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
    with atomic_file(directory / QRELS) as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, docs in judgments.items():
            for did, grade in docs.items():
                f.write(f"{qid}\t{did}\t{grade}\n")
    if about is not None:
        with atomic_file(directory / ABOUT) as f:
            json.dump(about, f, indent=1)
    return directory
