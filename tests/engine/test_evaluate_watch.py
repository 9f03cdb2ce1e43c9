"""``kdetect evaluate --watch``: every checkpoint of a run scored as it appears, with a timeout."""

import json
import shutil

from tests.train_support import kdetect, tiny_run


def test_watch_evaluates_each_checkpoint_then_stops_at_the_final_model(tmp_path_factory, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run(tmp_path_factory), run)
    assert kdetect("evaluate", run, "--watch", "--timeout", "30", "--metric", "voc") == 0
    lines = [json.loads(line) for line in (run / "eval_watch.jsonl").read_text().splitlines()]
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("*-*.keras"))
    assert [line["checkpoint"] for line in lines] == checkpoints + ["model.keras"]
    assert all(line["metric"] == "voc" and 0.0 <= line["mAP"] <= 1.0 for line in lines)
    assert json.loads((run / "metrics.json").read_text())["mAP"] == lines[-1]["mAP"]


def test_watch_gives_up_after_the_timeout_with_a_clear_error(tmp_path_factory, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run(tmp_path_factory), run)
    (run / "model.keras").unlink()
    shutil.rmtree(run / "checkpoints")
    assert kdetect("evaluate", run, "--watch", "--timeout", "1") == 1
    err = capsys.readouterr().err
    assert "no new checkpoint" in err and "--timeout" in err


def test_watch_needs_a_run_directory(tmp_path, capsys):
    assert kdetect("evaluate", tmp_path, "--watch", "--timeout", "1") == 1
    assert "not a run directory" in capsys.readouterr().err
