"""Exported-model latency: Keras ``predict`` beside onnxruntime and LiteRT, CPU, batch 1.

    python benchmarks/exported.py [--configs tiny resnet50_fpn] [--repeats 5]

Each configuration's random-weight detector (benchmarks/common.py) is exported to ONNX and TFLite
with ``kdetect.export.export_model`` in a temporary folder. Then each repeat runs the same image
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


def measure(name: str, repeats: int) -> dict:
    """Latencies (s) of Keras and both exported files on one image of configuration ``name``."""
    from kdetect.export import ExportedModel, export_model

    height, width = CONFIGS[name]["input_size"]
    image = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    model = build_model(name)
    runners = {"keras": model.predict_on_batch}
    result: dict = {"export_s": {}}
    with tempfile.TemporaryDirectory(prefix="kdetect-bench-export-") as folder:
        for runtime in RUNTIMES:
            start = time.perf_counter()
            path = export_model(model, Path(folder) / f"{name}.{runtime}", runtime)
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
        for key in RUNTIMES
    }
    return result


def table_rows(results: dict[str, dict]) -> list[list[str]]:
    rows = []
    for name, r in results.items():
        size = "x".join(str(s) for s in CONFIGS[name]["input_size"])
        latency, ratio = r["latency_s"], r["ratio_to_keras"]
        rows.append(
            [
                f"kdetect {name}",
                size,
                f"{latency['keras']:.3f}",
                f"{latency['onnx']:.3f} ({ratio['onnx']:.2f}x)",
                f"{latency['tflite']:.3f} ({ratio['tflite']:.2f}x)",
                f"{r['export_s']['onnx']:.0f} / {r['export_s']['tflite']:.0f}",
            ]
        )
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
    args = parser.parse_args()
    unknown = [c for c in args.configs if c not in CONFIGS or "model" not in CONFIGS[c]]
    if unknown:
        parser.error(f"not a built-in model config: {unknown}")
    results = {name: measure(name, args.repeats) for name in args.configs}
    if args.json:
        print(json.dumps(results), flush=True)
    else:
        print_results(results)


if __name__ == "__main__":
    sys.exit(main())
