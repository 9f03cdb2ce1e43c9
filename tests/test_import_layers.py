"""The packages of kdetect form a stack: a module imports only from its own layer or below.

Bottom to top: plumbing <- core <- data <- drawing <- evaluation <- runs/recipes <- products <-
cli. Every
module under ``kdetect/`` is read with ``ast`` (nothing is imported); each ``import x`` and
``from x import y`` counts, at module level or inside a function, with relative imports
resolved. ``from pkg import name`` counts as importing ``pkg.name`` when that is a module. The
package ``kdetect/__init__.py`` maps names to modules lazily by string and is exempt; imports by
string (``importlib.import_module``) are not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "kdetect"

#: Bottom to top; a module belongs to the layer of its longest listed prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "plumbing",
        (
            "kdetect.errors",
            "kdetect.paths",
            "kdetect.allocator",
            "kdetect.native_logs",
            "kdetect.keras_registration",
            "kdetect.parsing",
        ),
    ),
    (
        "core",
        (
            "kdetect.boxes",
            "kdetect.anchors",
            "kdetect.matching",
            "kdetect.losses",
            "kdetect.tf_ops",
            "kdetect.layers",
            "kdetect.backbones",
            "kdetect.backbone_names",
            "kdetect.models",
            "kdetect.pretrained",
        ),
    ),
    ("data", ("kdetect.data",)),
    # Pictures: numpy, Pillow and matplotlib only, drawn for evaluation, training and products.
    ("drawing", ("kdetect.plots", "kdetect.visualize")),
    ("evaluation", ("kdetect.evaluation",)),
    ("runs/recipes", ("kdetect.runs", "kdetect.recipes", "kdetect.distribute")),
    (
        "products",
        (
            "kdetect.predict",
            "kdetect.predict_formats",
            "kdetect.serve",
            # The Label Studio ML backend and retraining, beside serve (whose app attaches it).
            "kdetect.labelstudio",
            "kdetect.export",
            "kdetect.checkpoint_import",
        ),
    ),
    ("cli", ("kdetect.cli", "kdetect.__main__")),
]
EXEMPT = {"kdetect"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    """Index of the layer ``module`` belongs to (None for the exempt package or an unknown one)."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


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
    assert not unmapped, f"modules without a layer (add them to LAYERS): {unmapped}"


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
                f"{where}:{line}: {module} ({LAYERS[own][0]}) imports {target} "
                f"({LAYERS[theirs][0]})"
            )
    assert not upward, f"{len(upward)} upward imports:\n" + "\n".join(upward)
