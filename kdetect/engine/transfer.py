"""Initialising a detector from another one's weights (``train.init_from``)."""

from __future__ import annotations

from typing import Any


def transfer_weights(source, target) -> tuple[int, list[str]]:
    """Copy the variables of ``source`` into ``target`` where names and shapes agree.

    Variables are matched by their path without the model's own name (``rpn_head/conv/kernel``);
    when the two models name their layers differently (auto-numbered names), they are matched
    by position instead, which is stable for the same architecture. Variables whose shapes
    differ (the class-dependent box predictor when the class count changes) keep their fresh
    initialisation.

    Returns:
        ``(number of variables copied, paths of target variables left as initialised)``.
    """

    def keys(model) -> dict[str, Any]:
        prefix = f"{model.name}/"
        return {v.path.removeprefix(prefix): v for v in model.weights}

    src_vars, dst_vars = list(source.weights), list(target.weights)
    by_path, dst_paths = keys(source), keys(target)
    matched_by_path = sum(path in by_path for path in dst_paths)
    if matched_by_path < 0.5 * len(dst_vars) and len(src_vars) == len(dst_vars):
        pairs = list(zip(src_vars, dst_vars, strict=True))
    else:
        pairs = [(by_path.get(path), v) for path, v in dst_paths.items()]
    copied, skipped = 0, []
    for src, dst in pairs:
        if src is None or tuple(src.shape) != tuple(dst.shape):
            skipped.append(dst.path)
            continue
        dst.assign(src.value)
        copied += 1
    return copied, skipped
