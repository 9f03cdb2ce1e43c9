"""A Label Studio project's label config: its ``RectangleLabels`` and their model classes.

The label config is the project's XML (``<View><Image name="image" value="$image"/>
<RectangleLabels name="label" toName="image"><Label value="Cat"/>...``). kdetect needs the
control's ``name`` (a region's ``from_name``), the ``toName`` image's ``name`` (``to_name``) and
the task field holding the image URL (the image's ``value`` without ``$``), and the ``Label
value``s, matched to the model's class names exactly, then ignoring case.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field

from kdetect.plumbing.errors import KdetectError

#: A label config is a few KiB; anything far larger is refused before parsing.
MAX_CONFIG_BYTES = 1024 * 1024


class LabelConfigError(KdetectError):
    """A label config kdetect cannot use (not XML, no RectangleLabels, no image)."""


@dataclass(frozen=True)
class LabelConfig:
    """The first ``RectangleLabels`` control of a label config and the image it labels."""

    from_name: str
    to_name: str
    image_key: str
    labels: tuple[str, ...]


@dataclass
class LabelMap:
    """Label Studio label <-> model class: ``to_class`` for known labels, the rest listed."""

    to_class: dict[str, str]
    unknown: list[str] = field(default_factory=list)
    unused_classes: list[str] = field(default_factory=list)

    @property
    def to_label(self) -> dict[str, str]:
        """Model class -> Label Studio label (the first label that maps to it)."""
        out: dict[str, str] = {}
        for label, name in self.to_class.items():
            out.setdefault(name, label)
        return out

    def message(self) -> str:
        """One line for the response and the log: what maps and what the model does not know."""
        text = f"{len(self.to_class)} of {len(self.to_class) + len(self.unknown)} labels map to "
        text += "model classes"
        if self.unknown:
            text += f"; the model does not know {', '.join(map(repr, self.unknown))}"
        if self.unused_classes:
            text += f"; model classes without a label: {', '.join(map(repr, self.unused_classes))}"
        return text


def parse_label_config(xml: str) -> LabelConfig:
    """Parse ``xml`` and return its first ``RectangleLabels`` control (tags are case-blind,
    as in Label Studio). Raises :class:`LabelConfigError` naming what is missing."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("label config: empty (expected Label Studio's XML)")
    if len(xml.encode()) > MAX_CONFIG_BYTES:
        raise LabelConfigError(f"label config: over {MAX_CONFIG_BYTES} bytes")
    if "<!ENTITY" in xml or "<!DOCTYPE" in xml:
        raise LabelConfigError("label config: DOCTYPE/ENTITY declarations are not allowed")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"label config: not valid XML ({exc})") from None
    elements = list(root.iter())
    control = next((e for e in elements if e.tag.lower() == "rectanglelabels"), None)
    if control is None:
        raise LabelConfigError("label config: no <RectangleLabels> control (kdetect draws boxes)")
    from_name, to_name = control.get("name"), control.get("toName")
    if not from_name or not to_name:
        raise LabelConfigError("label config: <RectangleLabels> needs name and toName")
    images = [e for e in elements if e.tag.lower() == "image" and e.get("name") == to_name]
    image = images[0] if images else None
    if image is None or not (image.get("value") or "").startswith("$"):
        raise LabelConfigError(f"label config: no <Image name={to_name!r} value='$...'>")
    labels = tuple(e.get("value") for e in control if e.tag.lower() == "label" and e.get("value"))
    if not labels:
        raise LabelConfigError(f"label config: <RectangleLabels name={from_name!r}> has no Label")
    return LabelConfig(from_name, to_name, image.get("value")[1:], labels)


def map_labels(labels: Sequence[str], classes: Sequence[str]) -> LabelMap:
    """Match each label to a class: the same name, else the same name ignoring case."""
    exact = set(classes)
    folded: dict[str, str] = {}
    for name in classes:
        folded.setdefault(name.casefold(), name)
    to_class, unknown = {}, []
    for label in labels:
        if label in exact:
            to_class[label] = label
        elif label.casefold() in folded:
            to_class[label] = folded[label.casefold()]
        else:
            unknown.append(label)
    unused = [name for name in classes if name not in set(to_class.values())]
    return LabelMap(to_class, unknown, unused)
