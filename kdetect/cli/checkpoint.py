"""``kdetect checkpoint list|info|import|pack|unpack``: find, inspect, import and move trained
runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from kdetect.cli import app

checkpoint_app = typer.Typer(
    help="List and inspect runs, import torchvision checkpoints as runs, pack and unpack runs.",
    no_args_is_help=True,
)
app.add_typer(checkpoint_app, name="checkpoint")
console = Console()


@checkpoint_app.command("list")
def list_runs(
    root: Annotated[Path, typer.Argument(help="Folder holding run directories.")] = Path("runs"),
) -> None:
    """List the runs (and packed .kdet files) under a folder, newest first."""
    from rich.table import Table

    from kdetect.runs import best_metric
    from kdetect.runs import list_runs as find_runs

    runs = find_runs(root)
    if not runs:
        console.print(f"no runs under {root}", highlight=False)
        return
    table = Table(title=f"runs under {root}")
    for column in ("name", "date", "epochs", "status", "best metric", "model"):
        table.add_column(column)
    for run in runs:
        best = best_metric(run)
        table.add_row(
            run.name,
            run.created.strftime("%Y-%m-%d %H:%M"),
            str(run.epochs),
            "packed" if run.kind == "packed" else str(run.meta.get("status", "")),
            f"{best[0]} {best[1]:.4f}" if best else "",
            "yes" if run.kind == "packed" or run.model_path is not None else "no",
        )
    console.print(table)


@checkpoint_app.command("info")
def info(
    run: Annotated[Path, typer.Argument(help="Run directory, .keras file or packed .kdet run.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show a run's recipe, classes, training history and metrics."""
    from rich.table import Table

    from kdetect.runs import best_metric, inspect_run

    found = inspect_run(run)
    best = best_metric(found)
    summary = {
        "path": str(found.path),
        "kind": found.kind,
        "model": str(found.model_path) if found.model_path else None,
        "classes": found.classes,
        "epochs": found.epochs,
        "best_metric": list(best) if best else None,
        "meta": found.meta,
        "recipe": found.recipe,
        "metrics": found.metrics,
        "last_epoch": found.history[-1] if found.history else None,
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    table = Table(title=str(found.path), show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    rows = [
        ("kind", found.kind),
        ("model", summary["model"] or ("inside the pack" if found.kind == "packed" else "none")),
        ("status", str(found.meta.get("status", ""))),
        ("epochs", str(found.epochs)),
        ("best", f"{best[0]} {best[1]:.4f}" if best else ""),
        ("classes", ", ".join(found.classes) if found.classes else "unknown"),
    ]
    recipe = found.recipe or {}
    model_cfg, data_cfg = recipe.get("model") or {}, recipe.get("data") or {}
    if recipe:
        rows += [
            ("backbone", f"{model_cfg.get('backbone')} (fpn: {model_cfg.get('fpn')})"),
            ("data", f"{data_cfg.get('format')} {data_cfg.get('root') or ''}".strip()),
            # runs before model.image_size kept it under data
            ("image size", str(model_cfg.get("image_size", data_cfg.get("image_size")))),
        ]
    if found.history:
        last = found.history[-1]
        rows += [(f"last {k}", v) for k, v in last.items() if k != "epoch" and v != ""]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    if found.metrics:
        metrics = Table(title="metrics")
        metrics.add_column("metric")
        metrics.add_column("value", justify="right")
        for key, value in found.metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        console.print(metrics)


@checkpoint_app.command("pack")
def pack(
    run: Annotated[Path, typer.Argument(help="Run directory to pack.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Packed file (default: RUN_DIR.kdet beside the run)."),
    ] = None,
) -> None:
    """Pack a run into one portable .kdet file (model, classes, recipe, metrics, metadata)."""
    from kdetect.runs import pack as pack_run

    path = pack_run(run, output)
    size = path.stat().st_size / 1e6
    console.print(f"packed {escape(str(run))} -> {escape(str(path))} ({size:.1f} MB)",
                  highlight=False, soft_wrap=True)  # fmt: skip


@checkpoint_app.command("import")
def import_checkpoint(
    weights: Annotated[Path, typer.Argument(help="Checkpoint file (.pth, .pt or .safetensors).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory to create.")],
    source: Annotated[
        str, typer.Option("--from", help="Framework the checkpoint comes from.")
    ] = "torchvision",
    arch: Annotated[
        str,
        typer.Option(
            "--arch",
            help="torchvision's builder name (kdetect models lists them all), e.g. "
            "fasterrcnn_resnet50_fpn, retinanet_resnet50_fpn, ssdlite320_mobilenet_v3_large.",
        ),
    ] = "fasterrcnn_resnet50_fpn",
    classes: Annotated[
        str | None,
        typer.Option(
            "--classes",
            help="Class names: comma-separated, or a file (classes.json or one name per line); "
            "default: COCO's for COCO weights.",
        ),
    ] = None,
) -> None:
    """Import a torchvision detection checkpoint as a run (read without torch, no pickle
    code is ever run); predict, evaluate, serve, export and train --set train.init_from=RUN
    accept it."""
    from kdetect.apps.checkpoint_import import import_checkpoint as run_import

    path = run_import(weights, output, arch=arch, source=source, classes=classes)
    # soft_wrap: the paths are never folded, so that they copy whole
    console.print(f"imported {escape(str(weights))} ({arch}) -> {escape(str(path))}",
                  highlight=False, soft_wrap=True)  # fmt: skip


@checkpoint_app.command("unpack")
def unpack(
    packed: Annotated[Path, typer.Argument(help="Packed .kdet file.")],
    dest: Annotated[
        Path | None,
        typer.Argument(help="Run directory to create (default: beside the file)."),
    ] = None,
) -> None:
    """Unpack a .kdet file into a run directory usable by predict, evaluate and serve."""
    from kdetect.runs import unpack as unpack_run

    path = unpack_run(packed, dest)
    console.print(f"unpacked {escape(str(packed))} -> {escape(str(path))}",
                  highlight=False, soft_wrap=True)  # fmt: skip
