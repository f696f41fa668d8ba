"""The documentation site builds in strict mode: a page, a nav entry or a README snippet that is missing, a
`::: lit_dr.X` or a cross-reference to a renamed object, or a docstring documenting a parameter the signature no
longer has, each fails the build (mkdocs.yml). A build: 6 s on 2 quiet cores, 43 s at load average 8; a renamed class is a third
build, in the slow tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def mkdocs(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    built = mkdocs("build", "--strict", "--site-dir", str(out))
    assert built.returncode == 0, built.stderr[-4000:]
    return out


def test_the_site_builds_in_strict_mode_with_every_page_of_the_nav(site):
    nav = re.findall(r":\s*([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M)
    assert len(nav) >= 20
    for page in nav:
        assert (site / page.removesuffix(".md").removesuffix("index")).is_dir() or page == "index.md", page
    # The API reference is built from the docstrings: the class's own text is on the page.
    objectives = (site / "api" / "objectives" / "index.html").read_text()
    assert 'id="lit_dr.ANCE"' in objectives and "Xiong et al., ICLR 2021" in objectives
    # The README's commands are in the pages as the README has them (pymdownx.snippets), not a copy.
    readme = (ROOT / "README.md").read_text()
    line = next(x for x in readme.splitlines() if "lit-dr fit --config configs/samtone.yaml" in x)
    getting_started = (site / "getting-started" / "index.html").read_text()
    assert "configs/samtone.yaml" in getting_started and line.split()[0] in getting_started
    assert "--8&lt;--" not in getting_started  # an unresolved snippet shows as text


@pytest.mark.parametrize("mistake", [pytest.param("a renamed class", marks=pytest.mark.slow),
                                     "a parameter the signature lacks"])
def test_a_renamed_object_breaks_the_build(tmp_path, mistake):
    """The point of the strict build: on a copy of the repository, rename a documented class, or a parameter a
    docstring names, and the build fails naming it."""
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra: pip install -e '.[docs]'")
    copy = tmp_path / "repo"
    for name in ("docs", "lit_dr", "configs"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("mkdocs.yml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    path = copy / "lit_dr" / "objectives" / "ance.py"
    text = path.read_text()
    if mistake == "a renamed class":
        text, expect = text.replace("class ANCE(", "class Ance("), "ance.ANCE"
    else:
        text, expect = text.replace("in_batch_negatives: bool = False", "in_batch: bool = False"), "in_batch_negatives"
    assert text != path.read_text()
    path.write_text(text)
    built = mkdocs("build", "--strict", "--site-dir", str(tmp_path / "site"), cwd=copy)
    assert built.returncode != 0 and expect in built.stderr, built.stderr[-3000:]
