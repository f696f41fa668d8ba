"""Several processes over gloo: `test` and `predict` write the same run file on 1, 2 and 3 processes for an odd
number of queries and for fewer queries than processes (3: marked slow); gradient checkpointing trains under DDP with gradient
caching; a non-finite loss on one process stops every process with
the same error, without waiting for a collective's timeout. (`process_probe.py` is what each process runs.)"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lit_dr.data.synthetic import write_beir

TESTS = Path(__file__).resolve().parent


def run_probe(world: int, model: str, data: Path, out: Path, *cases: str, timeout: float = 150) -> None:
    """`world` processes with torchrun's variables, each running `process_probe.py`; all must exit in `timeout`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        # The lit_dr under test: the caller's PYTHONPATH first (a check against another checkout), then this one.
        path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(TESTS.parent)) if p)
        env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
        if world > 1:
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                       LOCAL_RANK=str(rank), NODE_RANK="0")
        procs.append(subprocess.Popen([sys.executable, str(TESTS / "process_probe.py"), model, str(data),
                                       str(data / "cache"), str(out), *cases], env=env, text=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    try:
        for p in procs:
            _, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two data sets on one corpus: a test split of 5 queries ("five") and of 1 query ("one")."""
    root = tmp_path_factory.mktemp("processes")
    for name, queries in (("five", [3, 0, 7, 12, 5]), ("one", [6])):
        write_beir(root / name)
        lines = ["query-id\tcorpus-id\tscore"] + [f"q{q}\td{q}\t1" for q in queries]
        (root / name / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


def run_files(out: Path, name: str, world: int) -> dict[str, str]:
    directory = out / f"{name}-w{world}"
    return {split: (directory / f"{split}-step0000000.trec").read_text() for split in ("test", "predict")}


def check_same_run_files(out: Path, worlds: tuple[int, ...]) -> None:
    for name, queries in (("five", 5), ("one", 1)):
        one = run_files(out, name, 1)
        assert len({line.split()[0] for line in one["test"].splitlines()}) == queries
        assert one["predict"] == one["test"]
        for world in worlds:
            assert run_files(out, name, world) == one, (name, world)


def test_test_and_predict_give_one_run_file_on_1_and_2_processes(tiny_model_dir, data, tmp_path):
    run_probe(1, tiny_model_dir, data, tmp_path, "eval:five", "eval:one")  # first: builds the token cache
    run_probe(2, tiny_model_dir, data, tmp_path, "eval:five", "eval:one", "checkpointing")
    check_same_run_files(tmp_path, (2,))
    # Gradient checkpointing with gradient caching under DDP (non-reentrant: the replay's autograd.grad works).
    assert [(tmp_path / f"checkpointing-w2-r{r}.txt").read_text() for r in (0, 1)] == ["ok 2", "ok 2"]


@pytest.mark.slow
def test_test_and_predict_give_one_run_file_on_3_processes(tiny_model_dir, data, tmp_path):
    for world in (1, 3):
        run_probe(world, tiny_model_dir, data, tmp_path, "eval:five", "eval:one")
    check_same_run_files(tmp_path, (3,))


def test_non_finite_loss_on_one_process_stops_every_process_with_the_same_error(tiny_model_dir, data, tmp_path):
    run_probe(2, tiny_model_dir, data, tmp_path, "nonfinite", timeout=120)
    errors = [(tmp_path / f"nonfinite-w2-r{r}.txt").read_text() for r in (0, 1)]
    for error in errors:
        assert error.startswith("FloatingPointError: non-finite training loss on process(es) [1] of 2"), error
    # The same error up to the batch each process names.
    assert errors[0].split("; rank ")[0] == errors[1].split("; rank ")[0]
