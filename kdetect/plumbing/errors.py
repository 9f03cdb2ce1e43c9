"""The one exception family for expected failures.

Anything a user can cause and fix (a missing file, a bad recipe key, a corrupt image) raises a
``KdetectError`` subclass with a one-line message that names the file or key. The CLI catches this
family at the command boundary, prints the message in red and exits with status 1; any other
exception keeps its traceback.
"""

import difflib
from collections.abc import Iterable


class KdetectError(Exception):
    """Base class of expected, user-fixable failures."""


class DataError(KdetectError):
    """Bad dataset input: missing or corrupt image, malformed annotation, invalid box, ..."""


class DataErrors(DataError):
    """Several bad inputs found at once: ``problems`` holds one line each, the message sums up.

    The CLI prints every problem on its own line, then the summary.
    """

    def __init__(self, problems: list[str], summary: str):
        super().__init__(summary)
        self.problems = list(problems)


class InputShapeError(DataError, ValueError):
    """Images of the wrong shape given to ``predict`` (a ``ValueError`` too, for Python callers)."""


class RecipeError(KdetectError):
    """A recipe file or override that does not validate."""


class CheckpointError(KdetectError):
    """A missing or unreadable checkpoint / model file."""


class DiskFullError(CheckpointError):
    """Not enough free disk space for a file about to be written (names the path, the bytes
    needed and the bytes free); what was complete before is kept."""


class RunLockedError(KdetectError):
    """A run directory another live process is training into (names the folder and its pid)."""


class OutputError(KdetectError):
    """An output path that would overwrite an input, or existing results without --overwrite."""


class TrainingDiverged(KdetectError):
    """A loss term became NaN or infinite: training stopped, the last good checkpoint kept."""


class ExportError(KdetectError):
    """A model that cannot be exported in the requested format (names the op and the reason)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """The hint for a mistyped name: `` (did you mean X?)`` with the closest of ``choices``
    (difflib's ratio), or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""
