"""Notebooks stay in step with the code: every code cell compiles and every `lit_dr` name it imports exists; the
analysis notebooks run end to end on the tiny BERT and synthetic data (slow) and save their figures."""

import ast
import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from lit_dr.data.synthetic import write_beir

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# The figures each analysis notebook saves under $LIT_DR_FIGURES. quickstart.ipynb trains the real MiniLM on SciFact
# (minutes of CPU per epoch), so it is only compiled here.
FIGURES = {
    "alignment_uniformity.ipynb": ["alignment_uniformity.png"],
    "compare_runs.ipynb": ["compare_runs.png"],
    "embedding_space.ipynb": ["embedding_tsne.png", "embedding_top1_distance.png"],
    "refresh_history.ipynb": ["refresh_history.png"],
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_compiles_and_imports_exist(path):
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert cells
    for cell in cells:
        tree = ast.parse("".join(cell["source"]))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("lit_dr"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{path.name}: {node.module}.{alias.name}"


def test_every_analysis_notebook_is_executed_and_committed_without_outputs():
    assert sorted(p.name for p in NOTEBOOKS) == sorted([*FIGURES, "quickstart.ipynb"])
    for name in FIGURES:
        cells = json.loads((NOTEBOOK_DIR / name).read_text())["cells"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_and_saves_its_figures(name, tiny_model_dir, cache_dir, tmp_path, monkeypatch):
    """Each notebook as a user runs it, with no run given: its own short demo fit on the tiny BERT, then the figures.

    Executed by a `python3` kernel, which jupyter_client starts with this interpreter (sys.executable)."""
    import nbclient  # dev dependencies: a broken install fails, never skips
    import nbformat
    from matplotlib.image import imread

    data = write_beir(tmp_path / "data", n_docs=96, n_queries=80)  # 16 dev queries, 64 for training
    figures = tmp_path / "figures"
    env = {"LIT_DR_MODEL": tiny_model_dir, "LIT_DR_DATASET": str(data), "LIT_DR_WORK": str(tmp_path / "work"),
           "LIT_DR_FIGURES": str(figures), "LIT_DR_DEMO_STEPS": "24", "LIT_DR_DEMO_LR": "3e-3"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
    for png in FIGURES[name]:
        image = imread(figures / png)  # (H, W, 4) floats
        assert image.shape[0] > 200 and image.shape[1] > 300, png
        colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
        assert len(colours) > 50, f"{png}: {len(colours)} colours, an empty plot?"
