"""The ``kdetect`` commands that README.md and docs/*.md show are ones the CLI accepts: each is
parsed by the real command (its options, choices and value types), without running it, so a
renamed flag or a removed choice fails here before a reader meets it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from kdetect.cli import _register_commands, app

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```(?:bash|sh|console)\n(.*?)```", re.S)


def _commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for block in BLOCK.findall(doc.read_text()):
            text = block.replace("\\\n", " ")
            for line in text.splitlines():
                line = line.strip().removeprefix("$ ")
                if not line.startswith("kdetect "):
                    continue
                line = line.split("  #", 1)[0].split(" # ", 1)[0].strip()
                # a synopsis ([--opt X], a|b) documents a form, not a command to type
                if "[" in line or "|" in line or "..." in line:
                    continue
                found.append((doc.name, line))
    return found


COMMANDS = _commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) > 25


@pytest.mark.parametrize("doc, line", COMMANDS, ids=[f"{d}: {c[:60]}" for d, c in COMMANDS])
def test_each_command_in_the_docs_parses(doc, line):
    _register_commands()
    command = typer.main.get_command(app)
    args = shlex.split(line)[1:]
    context = command.make_context("kdetect", list(args), resilient_parsing=False)
    # descend into the sub-command(s) the way Click does when it runs
    while hasattr(command, "resolve_command"):
        remaining = [*getattr(context, "_protected_args", []), *context.args]
        if not remaining:
            break
        name, command, rest = command.resolve_command(context, remaining)
        context = command.make_context(name, rest, parent=context)
