"""The package's folders are its layers: a module imports only from its own layer or a lower one (README "Layout").

Every import of a `lit_dr` module counts, those inside functions too (a lazy import is still an arrow)."""

from __future__ import annotations

import ast
from pathlib import Path

import lit_dr

ROOT = Path(lit_dr.__file__).parent
LAYERS = {"files": 0, "data": 1, "evaluation": 2, "index": 2, "mining": 2, "models": 2, "objectives": 3,
          "training": 4, "commands": 5}


def layer_of(module: str) -> int | None:
    """The layer of a dotted `lit_dr...` module name (None for the package itself, which re-exports the top)."""
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 and parts[0] == "lit_dr" else None


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("lit_dr")]


def test_every_module_belongs_to_a_layer():
    loose = [p.relative_to(ROOT).as_posix() for p in ROOT.glob("*.py")
             if p.stem not in ("__init__", "__main__", "files")]
    assert not loose, f"modules outside the layer folders: {loose}"
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS) - {"files"}


def test_no_import_points_up_a_layer():
    upward = []
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in ("__init__.py", "__main__.py"):
            continue
        own = LAYERS[relative.parts[0].removesuffix(".py")]
        for line, name in imports(path):
            target = layer_of(name)
            if name == "lit_dr" or (target is not None and target > own):
                upward.append(f"{relative}:{line} imports {name}")
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)
