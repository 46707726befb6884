import json

import numpy as np

from dino_vla.pipeline.benchmark import NAIVE, _fixed_boxes
from dino_vla.cli import main
from dino_vla.types import Detections

STAGES = ("features", "detector", "segmenter", NAIVE, "end_to_end")


def test_bench_tiny_reports_every_stage_and_the_naive_baseline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # tiny models built fresh, here
    out = tmp_path / "b.json"
    assert main(["bench", "--models", "tiny", "-n", "2", "--warmup", "1", "--json", str(out)]) == 0

    report = json.loads(out.read_text())
    for stage in STAGES:
        s = report["stages"][stage]
        assert s["median_ms"] > 0 and s["p95_ms"] >= s["median_ms"] and s["runs"] == 2
        assert s["fps"] > 0
    assert report["segmenter_naive_over_ours"] > 0
    assert report["random_weights"] is True
    assert set(report["models"]) == {"features", "detector", "segmenter"}
    for model in report["models"].values():
        assert model["source"].startswith(str(tmp_path / "cache")) and model["params_m"] > 0
    assert report["image"] == {"source": "skimage.data.coffee()", "height": 400, "width": 600}

    printed = capsys.readouterr()
    table = printed.out[printed.out.index("median ms"):]
    for stage in STAGES:
        assert stage in table
    assert "naive" in printed.out and "RANDOM" in printed.out
    assert "NOT meaningful" in printed.err  # the --models tiny notice


def test_segmenter_boxes_are_exactly_n_deterministic_and_inside_the_image():
    found = Detections(np.array([[10, 20, 50, 60]], np.float32), np.array([0.9], np.float32), ("cup",),
                       (400, 600))
    boxes = _fixed_boxes(found, 4, "cup")
    assert boxes.boxes.shape == (4, 4) and boxes.phrases == ("cup",) * 4
    np.testing.assert_array_equal(boxes.boxes[0], found.boxes[0])  # the detector's own box first
    np.testing.assert_array_equal(boxes.boxes, _fixed_boxes(found, 4, "cup").boxes)
    assert (boxes.boxes[:, [0, 2]] <= 600).all() and (boxes.boxes[:, [1, 3]] <= 400).all()
    assert (boxes.boxes >= 0).all() and (boxes.boxes[:, 2:] > boxes.boxes[:, :2]).all()
    assert len(_fixed_boxes(Detections.empty((400, 600)), 2, "cup")) == 2
