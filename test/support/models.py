"""Helpers of the model and pipeline tests (fixtures are in conftest.py): loaders cached by path, so that
every module shares one loaded copy of each tiny model, and box/forward-call utilities."""
from __future__ import annotations

import functools
import itertools

import numpy as np

from dino_vla.models.detector import GroundingDetector
from dino_vla.models.features import DinoFeatures
from dino_vla.models.segmenter import Segmenter
from dino_vla.models.text import TextEncoder

ODD_SHAPE = (333, 517)  # the odd_image fixture's: non-square, odd height and width

load_features = functools.cache(DinoFeatures.load)
load_segmenter = functools.cache(Segmenter.load)
load_text = functools.cache(TextEncoder.load)


@functools.cache
def load_detector(path: str) -> GroundingDetector:
    # box_threshold 0 keeps every box, so that the tests see many detections from random weights
    return GroundingDetector.load(path, box_threshold=0.0, text_threshold=0.0, nms_iou=0.5, max_detections=900)


def with_settings(detector: GroundingDetector, **settings) -> GroundingDetector:
    """A detector sharing ``detector``'s model and processor with other thresholds."""
    current = dict(box_threshold=detector.box_threshold, text_threshold=detector.text_threshold,
                   nms_iou=detector.nms_iou, max_detections=detector.max_detections)
    return GroundingDetector(detector.model, detector.processor, detector.name, **{**current, **settings})


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two xyxy boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def max_same_phrase_iou(detections) -> float:
    pairs = itertools.combinations(range(len(detections)), 2)
    return max((iou(detections.boxes[i], detections.boxes[j]) for i, j in pairs
                if detections.phrases[i] == detections.phrases[j]), default=0.0)


class CallCounter:
    """Counts forward calls of a torch module while in use as a context manager."""

    def __init__(self, module):
        self.module = module
        self.calls = 0

    def _hook(self, *_):
        self.calls += 1

    def __enter__(self) -> "CallCounter":
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
