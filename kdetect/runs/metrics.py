"""A run's headline number, from its evaluation or its training history."""

from __future__ import annotations

from kdetect.runs.files import LEGACY_VAL_MAP_KEY, VAL_MAP_KEY, RunInfo


def history_value(row: dict, key: str):
    """``row[key]``, reading the validation mAP of older runs, written before it was
    named ``val_mAP``, from their ``val_map`` column."""
    value = row.get(key)
    if value in (None, "") and key == VAL_MAP_KEY:
        value = row.get(LEGACY_VAL_MAP_KEY)
    return value


def best_metric(info: RunInfo) -> tuple[str, float] | None:
    """The headline number of a run: evaluated mAP/AP, else the best val_mAP or val_loss."""
    if info.metrics:
        for key in ("mAP", "AP"):
            if info.metrics.get(key) is not None:
                return f"{info.metrics.get('metric', key)} {key}", float(info.metrics[key])
    if info.meta.get("best_metric"):
        name, value = info.meta["best_metric"]
        return name, float(value)
    for key, pick in ((VAL_MAP_KEY, max), ("val_loss", min)):
        found = [history_value(row, key) for row in info.history]
        values = [float(v) for v in found if v not in (None, "")]
        if values:
            return key, pick(values)
    return None
