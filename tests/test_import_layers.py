"""The packages of kdetect form a stack: a module imports only from its own layer or below.

The layers are the folders of ``kdetect/``, bottom to top as ``kdetect.LAYERS`` lists them
(docs/architecture.md explains each); every module lives in one (``kdetect.__main__`` is the
command line's). Every module under ``kdetect/`` is read with ``ast`` (nothing is imported);
each ``import x`` and ``from x import y`` counts, at module level or inside a function, with
relative imports resolved. ``from pkg import name`` counts as importing ``pkg.name`` when that
is a module. The package ``kdetect/__init__.py`` maps names to modules lazily by string and is
exempt; imports by string (``importlib.import_module``) are not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import kdetect

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "kdetect"
LAYERS = kdetect.LAYERS
EXEMPT = {"kdetect"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    """Index of the layer ``module`` belongs to (None for the exempt package or a module
    outside every layer's folder)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    folder = "cli" if parts[1] == "__main__" else parts[1]
    return LAYERS.index(folder) if folder in LAYERS else None


def imported_modules(path: Path, module: str, known: set[str]) -> list[tuple[int, str]]:
    """``(line, module)`` for every kdetect module the file imports, anywhere in it."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if candidate in known else base))
    return sorted({(line, name) for line, name in found if name.split(".")[0] == "kdetect"})


def test_every_module_has_a_layer():
    unmapped = [m for m in all_modules() if m not in EXEMPT and layer_of(m) is None]
    assert not unmapped, f"modules outside the layers' folders (kdetect.LAYERS): {unmapped}"


def test_each_layer_is_a_folder():
    for layer in LAYERS:
        assert (PACKAGE_ROOT / layer / "__init__.py").is_file(), layer


def test_no_module_imports_from_a_higher_layer():
    modules = all_modules()
    known = set(modules)
    upward = []
    for module, path in modules.items():
        if module in EXEMPT:
            continue
        own = layer_of(module)
        for line, target in imported_modules(path, module, known):
            theirs = layer_of(target)
            if own is None or theirs is None or theirs <= own:
                continue
            where = path.relative_to(PACKAGE_ROOT.parent)
            upward.append(
                f"{where}:{line}: {module} ({LAYERS[own]}) imports {target} ({LAYERS[theirs]})"
            )
    assert not upward, f"{len(upward)} upward imports:\n" + "\n".join(upward)
