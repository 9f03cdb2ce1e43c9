"""Exported-model latency: Keras ``predict`` beside onnxruntime and LiteRT, CPU, batch 1.

    python benchmarks/exported.py [--configs tiny resnet50_fpn imported_ssd300_vgg16]
                                  [--repeats 5] [--torch-python PYTHON]

Each configuration's detector (benchmarks/common.py: random weights for the built-in ones; for an
``imported_*`` one, a torchvision checkpoint written by ``--torch-python`` and imported as
benchmarks/imported.py does, run on the first of its photos) is exported to ONNX and TFLite
with ``kdetect.apps.export.export_model`` in a temporary folder; an export that fails is reported as
such (its error's first line) and left out of the timing. Then each repeat runs the same image
through the three back to back (Keras ``predict_on_batch``, onnxruntime's CPU provider, the
LiteRT interpreter with XNNPACK on every core), so a change of machine load moves all three
together; the numbers are medians, and the ratios medians of the per-repeat ratios to Keras
(below 1 means the exported file is faster). ``python -m benchmarks`` prints the same table
after its own (``--skip-export`` leaves it out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import CONFIGS, build_model, machine, print_table

RUNTIMES = ("onnx", "tflite")


def _model_and_image(name: str, folder: Path, torch_python: str | None):
    """Configuration ``name``'s detector and its one uint8 test image ``[1, H, W, 3]``."""
    config = CONFIGS[name]
    size = tuple(config["input_size"])
    if "imported" not in config:
        image = np.random.default_rng(0).integers(0, 256, (1, *size, 3), dtype=np.uint8)
        return build_model(name), image
    from imported import import_checkpoint, photos

    if torch_python is None:
        raise SystemExit(f"{name} needs --torch-python (a Python with torch and torchvision)")
    images, _ = photos(2, size)  # calibration photos; the first is the test image
    model, _ = import_checkpoint(torch_python, config["imported"], folder, images, size)
    return model, images[:1]


def measure(name: str, repeats: int, torch_python: str | None = None) -> dict:
    """Latencies (s) of Keras and both exported files on one image of configuration ``name``."""
    from kdetect.apps.export import ExportedModel, export_model

    result: dict = {"export_s": {}, "errors": {}}
    with tempfile.TemporaryDirectory(prefix="kdetect-bench-export-") as folder:
        model, image = _model_and_image(name, Path(folder), torch_python)
        runners = {"keras": model.predict_on_batch}
        for runtime in RUNTIMES:
            start = time.perf_counter()
            try:
                path = export_model(model, Path(folder) / f"{name}.{runtime}", runtime)
            except Exception as exc:  # noqa: BLE001 - reported in the table, not hidden
                result["errors"][runtime] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                continue
            result["export_s"][runtime] = time.perf_counter() - start
            runners[runtime] = ExportedModel(path).predict
        times: dict[str, list[float]] = {key: [] for key in runners}
        for run in runners.values():
            run(image)  # warm-up
        for _ in range(repeats):
            for key, run in runners.items():
                start = time.perf_counter()
                run(image)
                times[key].append(time.perf_counter() - start)
    result["latency_s"] = {key: statistics.median(values) for key, values in times.items()}
    result["ratio_to_keras"] = {
        key: statistics.median(a / b for a, b in zip(times[key], times["keras"], strict=True))
        for key in runners
        if key != "keras"
    }
    return result


def _cell(result: dict, runtime: str) -> str:
    """An exported file's latency and ratio to Keras, or why there is no file."""
    if runtime in result.get("errors", {}):
        return f"no export ({result['errors'][runtime][:60]})"
    return f"{result['latency_s'][runtime]:.3f} ({result['ratio_to_keras'][runtime]:.2f}x)"


def table_rows(results: dict[str, dict]) -> list[list[str]]:
    rows = []
    for name, r in results.items():
        size = "x".join(str(s) for s in CONFIGS[name]["input_size"])
        seconds = r["export_s"]
        export = " / ".join(f"{seconds[k]:.0f}" if k in seconds else "-" for k in RUNTIMES)
        cells = [_cell(r, runtime) for runtime in RUNTIMES]
        rows.append([f"kdetect {name}", size, f"{r['latency_s']['keras']:.3f}", *cells, export])
    return rows


HEADER = [
    "what",
    "input",
    "Keras predict b1 (s)",
    "onnxruntime b1 (s, ratio)",
    "LiteRT b1 (s, ratio)",
    "export onnx / tflite (s)",
]


def print_results(results: dict[str, dict]) -> None:
    print_table(
        f"exported models, CPU · {machine()} · {time.strftime('%Y-%m-%d')}",
        HEADER,
        table_rows(results),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "resnet50_fpn"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON line, no table")
    parser.add_argument("--torch-python", help="writes the imported_* configs' checkpoints")
    args = parser.parse_args()
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    results = {name: measure(name, args.repeats, args.torch_python) for name in args.configs}
    if args.json:
        print(json.dumps(results), flush=True)
    else:
        print_results(results)


if __name__ == "__main__":
    sys.exit(main())
