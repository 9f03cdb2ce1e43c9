"""``kdetect dataset transform|inspect|convert``: thin commands over ``kdetect.data``.

``kdetect.data`` and ``kdetect.config`` are imported inside the functions: ``kdetect --help``
imports every command module and must not load TensorFlow.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kdetect.cli import app
from kdetect.cli._options import (
    ClassesOption,
    ImagesDirOption,
    InspectType,
    InvalidBoxOption,
    InvalidBoxPolicy,
    SourceOption,
    SourceType,
)

dataset_app = typer.Typer(
    help="Convert datasets to TFRecords and check what their annotations hold.",
    no_args_is_help=True,
)
app.add_typer(dataset_app, name="dataset")
console = Console()


# Options that ``transform`` and ``convert`` share.
SourceArgument = Annotated[
    Path, typer.Argument(help="Dataset folder (or, for coco/csv, the annotation file).")
]
SplitsOption = Annotated[
    list[str], typer.Option("--split", help="Split to convert; repeat for more (default: train).")
]
OutputOption = Annotated[Path, typer.Option("--output", "-o", help="Folder to write (new).")]
AllowOutsideRootOption = Annotated[
    bool,
    typer.Option(
        "--allow-outside-root",
        help="Copy images the annotations name outside the dataset folder (absolute or ../ "
        "paths); refused by default.",
    ),
]


@contextmanager
def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:

        def factory(split: str, total: int):
            task = progress.add_task(f"writing {split}", total=total)
            return lambda n: progress.advance(task, n)

        yield factory


@dataset_app.command()
def transform(
    source: SourceArgument,
    type: SourceOption,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the TFRecords (replaced).")
    ],
    split: SplitsOption = None,  # noqa: B006 - typer needs None for a repeatable option
    classes: ClassesOption = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N images per split.")
    ] = None,
    shards: Annotated[int, typer.Option(min=1, help="TFRecord files per split.")] = 1,
    on_invalid_box: InvalidBoxOption = InvalidBoxPolicy.error,
    images_dir: ImagesDirOption = None,
    allow_outside_root: AllowOutsideRootOption = False,
) -> None:
    """Write sharded TFRecords, classes.json and dataset.json from a VOC, COCO, CSV, YOLO or
    Label Studio dataset."""
    from kdetect.data.tfrecord import transform_dataset

    splits = split or ["train"]
    with _progress() as factory:
        summary = transform_dataset(
            type.value,
            source,
            splits,
            output,
            classes=classes,
            limit=limit,
            shards=shards,
            on_invalid_box=on_invalid_box.value,
            images_dir=images_dir,
            progress_factory=factory,
            allow_outside_root=allow_outside_root,
        )
    for name, info in summary["splits"].items():
        console.print(
            f"{name}: {info['images']} images, {info['boxes']} boxes -> "
            f"{len(info['files'])} file(s) in {escape(str(output))}"
        )
    console.print(f"classes ({len(summary['classes'])}): {', '.join(summary['classes'])}")


@dataset_app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="Dataset folder/file, or TFRecords (folder/glob).")],
    type: Annotated[
        InspectType | None, typer.Option("--type", help="Format; guessed when omitted.")
    ] = None,
    split: Annotated[str, typer.Option(help="Split to read.")] = "train",
    classes: ClassesOption = None,
    images_dir: ImagesDirOption = None,
    show: Annotated[int, typer.Option(min=0, help="Draw the first N images.")] = 0,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder for the drawn images.")
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(
            help="Also check the recipe's anchors against the boxes (as kdetect train does "
            "before training), suggesting anchor_sizes / aspect_ratios when they fit badly."
        ),
    ] = None,
) -> None:
    """Print images, boxes per class and per image, sizes and invalid boxes; draw examples.

    Every image is verified too; unusable ones (unreadable, corrupt, truncated, outside the size
    limits) are listed one per line and the exit code is 1.
    """
    from kdetect.data.inspect import inspect_dataset

    result = inspect_dataset(
        path,
        format=type.value if type else None,
        split=split,
        classes=classes,
        images_dir=images_dir,
        show=show,
        output=output,
    )
    _print_summary(result, f"{path} ({result.kind}, split {split})")
    if result.drawn:
        console.print(f"drew {len(result.drawn)} image(s) in {escape(str(output))}", soft_wrap=True)
    if result.annotations is not None:
        _print_quality(result.annotations, recipe)
    if recipe is not None and result.annotations is not None:
        _print_anchor_check(recipe, result.annotations)
    if result.bad_images:
        from kdetect.data.images import bad_images_error

        raise bad_images_error(result.bad_images, result.summary["images"])


@dataset_app.command()
def convert(
    source: SourceArgument,
    type: SourceOption,
    to: Annotated[SourceType, typer.Option("--to", help="Format to write.")],
    output: OutputOption,
    split: Annotated[
        list[str] | None,
        typer.Option(
            "--split", help="Split to convert; repeat for more (default: every split found)."
        ),
    ] = None,
    classes: ClassesOption = None,
    on_invalid_box: InvalidBoxOption = InvalidBoxPolicy.error,
    images_dir: ImagesDirOption = None,
    link: Annotated[
        bool, typer.Option("--link", help="Hard-link the images instead of copying them.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing non-empty output folder.")
    ] = False,
    allow_outside_root: AllowOutsideRootOption = False,
) -> None:
    """Rewrite a dataset in another format (the images copied into its layout).

    Every split the dataset holds is converted unless --split names some; each is read and
    every image verified first (as kdetect train does); the output is written under a temporary
    name beside it and renamed at the end, so on any error nothing is left behind.
    """
    from kdetect.data.writers import convert_dataset

    parts = convert_dataset(
        type.value,
        source,
        split or None,
        to.value,
        output,
        classes=classes,
        on_invalid_box=on_invalid_box.value,
        images_dir=images_dir,
        overwrite=overwrite,
        link=link,
        allow_outside_root=allow_outside_root,
    )
    for name, part in parts.items():
        boxes = sum(len(r.labels) for r in part.records)
        console.print(f"{name}: {len(part)} images, {boxes} boxes", highlight=False)
    classes_ = next(iter(parts.values())).classes
    console.print(f"classes ({len(classes_)}): {', '.join(classes_)}", highlight=False)
    console.print(f"wrote {to.value} to {escape(str(output))}", highlight=False, soft_wrap=True)


def _print_summary(result, title: str) -> None:
    """The counts and sizes of ``inspect_dataset``'s summary, boxes per class, and the first
    invalid boxes."""
    summary = result.summary
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    per_image = summary["boxes_per_image"]
    table.add_row("images", str(summary["images"]))
    table.add_row("boxes", str(summary["boxes"]))
    table.add_row("difficult / crowd boxes", str(summary["difficult_boxes"]))
    table.add_row("images without boxes", str(summary["images_without_boxes"]))
    table.add_row(
        "boxes per image",
        f"min {per_image['min']}, mean {per_image['mean']}, max {per_image['max']}",
    )
    table.add_row(
        "image width",
        f"{summary['width']['min']}..{summary['width']['max']}",
    )
    table.add_row("image height", f"{summary['height']['min']}..{summary['height']['max']}")
    sizes = ", ".join(f"{k} ({v})" for k, v in list(summary["sizes"].items())[:5])
    table.add_row("most common sizes", sizes)
    invalid_style = "red" if summary["invalid_boxes"] else ""
    table.add_row(
        "invalid boxes", f"[{invalid_style}]{summary['invalid_boxes']}[/]" if invalid_style else "0"
    )
    console.print(table)

    classes_table = Table(title="boxes per class")
    classes_table.add_column("id", justify="right")
    classes_table.add_column("class")
    classes_table.add_column("boxes", justify="right")
    for i, (name, count) in enumerate(summary["boxes_per_class"].items()):
        classes_table.add_row(str(i), name, str(count))
    console.print(classes_table)
    for box in result.invalid[:10]:
        console.print(f"[red]invalid:[/red] {escape(str(box))}", highlight=False)
    if len(result.invalid) > 10:
        console.print(f"... and {len(result.invalid) - 10} more invalid boxes")


def _print_anchor_check(recipe_path: Path, annotations) -> None:
    """The anchor coverage of ``recipe_path``'s model over ``annotations`` (see
    kdetect.engine.checks), as a table per class and the warning line."""
    from kdetect.config import builders
    from kdetect.config.loader import load
    from kdetect.engine.checks import anchor_report, anchor_warning

    recipe = load(recipe_path, ["model.backbone_weights=null"], check_paths=False)
    model = builders.build_model(recipe, len(annotations.classes))
    frame = model.image_size
    report = anchor_report(model, annotations, frame)
    if report is None:
        console.print(f"the {recipe.model.type} model has no anchors to check", highlight=False)
        return
    table = Table(title=f"anchor coverage in the {frame[0]}x{frame[1]} frame ({recipe_path})")
    table.add_column("class")
    table.add_column("boxes", justify="right")
    table.add_column(f"best IoU >= {report['covered_iou']:g}", justify="right")
    table.add_column(f"best IoU >= {report['fg_iou']:g}", justify="right")

    def share(value):
        return "-" if value is None else f"{value:.1%}"

    for name, row in report["per_class"].items():
        table.add_row(name, str(row["boxes"]), share(row["covered"]), share(row["fg"]))
    table.add_row("all", str(report["boxes"]), share(report["covered"]), share(report["fg"]))
    console.print(table)
    warning = anchor_warning(report)
    if warning:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)


def _print_quality(annotations, recipe_path: Path | None) -> None:
    """Box sizes and the checks of kdetect.data.quality (in the recipe's frame when given)."""
    from kdetect.data.quality import describe, quality_report, quality_warnings

    frame = None
    if recipe_path is not None:
        from kdetect.config.loader import load

        frame = tuple(load(recipe_path, check_paths=False).model.image_size)
    report = quality_report(annotations, frame)
    where = f"in the {frame[0]}x{frame[1]} frame" if frame else "in image pixels"
    table = Table(title=f"boxes {where} (min / p10 / median / p90 / max)", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("size sqrt(w*h)", describe(report["box_size"]))
    table.add_row("aspect ratio h/w", describe(report["aspect_ratio"], 2))
    table.add_row("tiny boxes (< 4 px)", str(len(report["tiny_boxes"])))
    table.add_row("near-duplicate box pairs", str(len(report["near_duplicate_boxes"])))
    table.add_row("groups of identical images", str(len(report["duplicate_images"])))
    imbalance = report["class_imbalance"]
    table.add_row("largest / smallest class", "-" if imbalance is None else f"{imbalance:.1f}")
    console.print(table)
    for line in quality_warnings(report):
        console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False)
