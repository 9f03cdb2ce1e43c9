"""Every ``--help`` screen, rendered at 80 columns as a terminal shows it: flags show no value
type (Click's convention: ``--resume``, not ``--resume <bool>``), values show theirs, paragraphs
of a command's description are re-flowed, and placeholders survive the markup."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from kdetect.cli import _register_commands, app


def _commands():
    _register_commands()

    def walk(command, path):
        yield path, command
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


COMMANDS = _commands()
VALUE_TYPES = {"TEXT", "INTEGER", "FLOAT", "PATH", "BOOLEAN", "BOOL", "FILENAME"}


def _help(path: list[str]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    "path, command", COMMANDS, ids=[" ".join(p) or "kdetect" for p, _ in COMMANDS]
)
def test_help_shows_flags_without_a_value_type(path, command):
    text = _help(path)
    assert "<bool>" not in text and "BOOLEAN" not in text, text
    assert all(len(line) <= 80 for line in text.splitlines()), text
    flags = [p for p in command.params if getattr(p, "is_flag", False) and not p.hidden]
    for flag in flags:
        (row,) = [line for line in text.splitlines() if f" {flag.opts[0]} " in line][:1]
        # the flag's help follows its name(s) directly, with no type column between
        words = row.split(flag.opts[0], 1)[1].replace("│", " ").split()
        assert not words or words[0] not in VALUE_TYPES and words[0][0] not in "<[", row


def test_placeholders_and_paragraphs_read_as_written():
    train = " ".join(_help(["train"]).split())
    assert "runs/NAME-TIMESTAMP" in train
    assert "Ctrl-C or SIGTERM saves the current state;" in train
    convert = _help(["dataset", "convert"])
    # a description paragraph is re-flowed to the width, not broken where the source line ended
    assert not any(
        line.strip() in ("read and", "under a temporary") for line in convert.splitlines()
    )


@pytest.mark.parametrize(
    "args, named",
    [
        (["evaluate", "runs/x", "--metric", "map"], "--metric"),
        (["evaluate", "runs/x", "--type", "pascal"], "--type"),
        (["evaluate", "runs/x", "--on-invalid-box", "keep"], "--on-invalid-box"),
        (["dataset", "inspect", "x", "--type", "pascal"], "--type"),
        (["dataset", "transform", "x", "--type", "pascal", "-o", "y"], "--type"),
        (["dataset", "convert", "x", "--type", "voc", "--to", "pascal", "-o", "y"], "--to"),
        (["predict", "runs/x", "a.jpg", "--format", "xml"], "--format"),
        (["export", "runs/x", "--format", "pb"], "--format"),
        (["train", "recipes/shapes.yaml", "--model", "yolo"], "--model"),
    ],
    ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else v,
)
def test_a_bad_choice_is_a_usage_error_in_every_command(args, named, capsys):
    """Exit 2 (Click's usage error) naming the option, before anything is read or loaded."""
    from kdetect.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert named in err, err


def test_class_lists_are_a_comma_list_or_a_file_everywhere(tmp_path):
    from kdetect.data.readers.common import parse_classes

    assert parse_classes("cat, dog") == ["cat", "dog"]
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    (tmp_path / "classes.json").write_text('{"classes": ["cat", "dog"]}')
    (tmp_path / "list.json").write_text('["cat", "dog"]')
    for name in ("names.txt", "classes.json", "list.json"):
        assert parse_classes(str(tmp_path / name)) == ["cat", "dog"]
    # the Python API names its parameter; the command line says the flag
    with pytest.raises(Exception, match="^classes: file not found"):
        parse_classes(str(tmp_path / "missing.txt"))
    # every command that takes a class list says both forms in its help
    for path in (["dataset", "inspect"], ["dataset", "convert"], ["checkpoint", "import"]):
        assert "comma-separated, or a file" in " ".join(_help(path).replace("│", " ").split())


def test_the_export_choices_are_the_exporters():
    from kdetect.apps.export import FORMATS
    from kdetect.cli.export import ExportFormat

    assert tuple(f.value for f in ExportFormat) == tuple(FORMATS)


@pytest.mark.parametrize(
    "message, argv, shown",
    [
        ("min_score: expected a value", ["predict", "r", "a.jpg"], "--min-score: expected a value"),
        ("source: unknown source 'x'", ["checkpoint", "import", "w.pth"], "--from: unknown source"),
        ("show: the drawn images need", ["dataset", "inspect", "d"], "--show: the drawn images"),
        ("quantize: applies to", ["export", "r", "-f", "onnx"], "--quantize: applies to"),
        ("runs/x: nothing to resume", ["train", "runs/x", "--resume"], "runs/x: nothing"),
        ("model: image_size must be", ["train", "r.yaml"], "model: image_size must be"),
    ],
)
def test_errors_name_parameters_and_the_command_line_says_flags(message, argv, shown):
    """The Python API names the parameter an error is about; the command line shows the flag of
    the command's option of that name, and leaves every other message as it is."""
    from kdetect.cli import _register_commands, as_flags

    _register_commands()
    assert as_flags(message, argv).startswith(shown)
