import numpy as np

from dino_vla.pipeline.benchmark import _fixed_boxes, models_for
from dino_vla.types import Detections


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


def test_only_the_models_the_timed_stages_need_are_loaded():
    assert models_for(("features",)) == ("features",)
    assert models_for(("segmenter",)) == ("detector", "segmenter")   # it segments the detector's boxes
    assert models_for(("end_to_end", "features")) == ("features", "detector", "segmenter")
