"""The benchmark suite runs, and its side-by-side timing protocol pairs the right numbers."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402
import peer_torchvision  # noqa: E402


def test_peer_serve_answers_one_timed_step_per_command(monkeypatch):
    built, calls = [], []

    def fake_make_step(mode, batch_size, threads=None):
        built.append((mode, batch_size))
        return lambda: calls.append((mode, batch_size))

    monkeypatch.setattr(peer_torchvision, "make_step", fake_make_step)
    out = io.StringIO()
    peer_torchvision.serve(io.StringIO("step train 2\nstep train 2\nstep inference 8\n"), out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {"ready": True}
    assert len(lines) == 4 and all(line["seconds"] >= 0 for line in lines[1:])
    assert built == [("train", 2), ("inference", 8)]  # each step is built once ...
    assert calls == [("train", 2)] * 3 + [("inference", 8)] * 2  # ... and warmed up once


class _FakePeer:
    def __init__(self, seconds):
        self.seconds = iter(seconds)
        self.calls = []

    def step(self, mode, batch_size):
        self.calls.append((mode, batch_size))
        return next(self.seconds)


def test_side_by_side_alternates_and_takes_the_median_of_pair_ratios(monkeypatch):
    clock = iter([0.0, 1.0, 1.0, 2.0, 2.0, 4.0])  # our three timed runs take 1, 1 and 2 s
    monkeypatch.setattr(common, "_clock", lambda: next(clock))
    order = []
    peer = _FakePeer([99.0, 4.0, 1.0, 2.0])  # the warm-up's answer, then one per pair
    fake_step = peer.step
    peer.step = lambda mode, batch_size: order.append("peer") or fake_step(mode, batch_size)
    mine, theirs, ratio = common.side_by_side(
        lambda: order.append("ours"), peer, "train", 2, repeats=3
    )
    assert order == ["ours", "peer"] * 4  # the warm-ups, then strictly alternating pairs
    assert peer.calls == [("train", 2)] * 4
    assert (mine, theirs) == (1.0, 2.0)
    assert ratio == 1.0  # median of 1/4, 1/1, 2/2 (the ratio of the medians would be 0.5)


def test_python_m_benchmarks_prints_the_table_for_the_tiny_config(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--configs", "tiny", "--repeats", "1"]
        + ["--skip-data", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kdetect tiny" in proc.stdout
    numbers = json.loads(out.read_text())["tiny"]
    assert numbers["train"] > 0 and numbers["infer_b1"] > 0 and numbers["infer_b8"] > 0
    assert "ratio" not in numbers  # no peer asked for
