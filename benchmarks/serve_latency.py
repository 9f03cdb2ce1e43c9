"""Request latency and throughput of ``kdetect serve`` at 1 and 8 concurrent clients.

    python benchmarks/serve_latency.py [--configs tiny resnet50_fpn] [--requests 200]
                                       [--clients 1 8] [--model RUN_DIR]

A real uvicorn server on a free port of 127.0.0.1 serves the model (a randomly initialised
FasterRCNN of each configuration, or ``--model`` a trained run); clients POST one JPEG of the
configuration's input size to ``/api/predict`` over HTTP (httpx, keep-alive) and the table gives
the median and 95th-percentile request latency and requests per second. The tiny configuration
runs by default; add ``resnet50_fpn`` for the full-size detector (600x1000 inputs).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from common import CONFIGS, build_model, machine, print_table

from kdetect.apps.serve.background import BackgroundServer


def _jpeg(height: int, width: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def measure(url: str, data: bytes, clients: int, requests: int) -> tuple[float, float, float]:
    """``(median_ms, p95_ms, requests_per_second)`` for ``requests`` spread over ``clients``."""
    import httpx

    def worker(count: int) -> list[float]:
        times = []
        with httpx.Client(base_url=url, timeout=300) as client:
            for _ in range(count):
                start = time.perf_counter()
                r = client.post("/api/predict", files={"image": ("a.jpg", data)})
                r.raise_for_status()
                times.append(time.perf_counter() - start)
        return times

    worker(2)  # warm up the connection path
    shares = [requests // clients + (i < requests % clients) for i in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        times = [t for part in pool.map(worker, shares) for t in part]
    elapsed = time.perf_counter() - start
    times.sort()
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    return statistics.median(times) * 1000, p95 * 1000, len(times) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny"], choices=sorted(CONFIGS))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--model", help="a trained run directory / .keras / .kdet instead")
    args = parser.parse_args()

    from kdetect.apps.serve import create_app

    rows = []
    targets = [(args.model, None)] if args.model else [(None, name) for name in args.configs]
    for path, name in targets:
        if path:
            app = create_app(path)
            height, width = app.state.predictor.model.image_size
            label = str(path)
        else:
            app = create_app(build_model(name), ["a", "b", "c"])
            height, width = CONFIGS[name]["input_size"]
            label = name
        data = _jpeg(height, width)
        requests = args.requests if name != "resnet50_fpn" else min(args.requests, 40)
        with BackgroundServer(app) as server:
            for clients in args.clients:
                median, p95, rps = measure(server.url, data, clients, requests)
                rows.append(
                    [
                        label,
                        f"{width}x{height}",
                        clients,
                        requests,
                        f"{median:.1f}",
                        f"{p95:.1f}",
                        f"{rps:.1f}",
                    ]
                )
    print_table(
        f"kdetect serve: POST /api/predict ({machine()})",
        ["model", "image", "clients", "requests", "median ms", "p95 ms", "req/s"],
        rows,
    )


if __name__ == "__main__":
    main()
