"""Reading values users write as text: booleans and YAML documents, with one-line errors.

* :func:`parse_bool` is the one boolean parser: ``true``/``false``, ``yes``/``no``, ``1``/``0``
  (any case, or the YAML/JSON values themselves); anything else is an error naming the key, never
  a silent ``False``.
* :func:`read_text` reads a text file users wrote (UTF-8, a byte-order mark dropped), with one
  line for a file that is not UTF-8 or cannot be read.
* :func:`compose_yaml` / :func:`load_yaml` parse YAML (safe loader) and refuse a document whose
  anchors and aliases expand to more than :data:`MAX_YAML_NODES` nodes (a "billion laughs"
  bomb: a few lines that grow exponentially when anything walks them) or refer to themselves.

The caller picks the error class (``DataError`` for a dataset file, ``RecipeError`` for a
recipe) so each keeps its own family.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from kdetect.plumbing.errors import KdetectError

TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")
#: Most nodes a YAML document may hold once its aliases are expanded. A recipe has about a
#: hundred and a data.yaml a few thousand at most (one per class name).
MAX_YAML_NODES = 100_000


def parse_bool(value: Any, key: str, error: type[KdetectError] = KdetectError) -> bool:
    """``value`` as a boolean: a bool, the integers 1/0, or the text of :data:`TRUE_WORDS` /
    :data:`FALSE_WORDS` (any case, spaces around ignored); else ``error`` naming ``key``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    raise error(f"{key}: expected true or false (yes/no, 1/0), got {shown}")


def read_text(path: str | os.PathLike, what: str, error: type[KdetectError] = KdetectError) -> str:
    """The UTF-8 text of ``path`` (a byte-order mark at the start is dropped); ``error``
    ``"<path>: cannot read <what> (...)"`` for a file that is not UTF-8 or cannot be read."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return handle.read()
    except UnicodeDecodeError as exc:
        raise error(f"{path}: cannot read {what} (byte {exc.start} is not UTF-8 text)") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """Nodes under ``node`` with every alias expanded (memoised per node: linear time)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    if id(node) in open_:
        return MAX_YAML_NODES + 1  # an alias inside its own anchor: infinite when expanded
    open_.add(id(node))
    total = 1
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            total += _expanded_size(item, sizes, open_)
            if total > MAX_YAML_NODES:
                break
    elif isinstance(node, yaml.MappingNode):
        for key, item in node.value:
            total += _expanded_size(key, sizes, open_) + _expanded_size(item, sizes, open_)
            if total > MAX_YAML_NODES:
                break
    open_.discard(id(node))
    sizes[id(node)] = total
    return total


def compose_yaml(text: str, where: str, error: type[KdetectError] = KdetectError):
    """The node graph of ``text`` (``None`` when empty), refusing alias bombs with ``error``.

    YAML syntax errors propagate as ``yaml.YAMLError`` for the caller to word.
    """
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None and _expanded_size(node, {}, set()) > MAX_YAML_NODES:
        raise error(
            f"{where}: YAML anchors/aliases expand to more than {MAX_YAML_NODES} values (or "
            "refer to themselves); write the values out"
        )
    return node


def load_yaml(text: str, where: str, error: type[KdetectError] = KdetectError) -> Any:
    """``yaml.safe_load(text)`` after :func:`compose_yaml`'s check."""
    compose_yaml(text, where, error)
    return yaml.safe_load(text)
