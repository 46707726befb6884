"""Shared fixtures of test_models.py and test_pipeline.py: tiny random-weight models of the real
architectures, written once per session with ``build_random_models`` and loaded through the product's
own loaders, plus the test images.

Import the fixtures by name into a test module (``from fixtures_models import coffee, ...``).
"""
from __future__ import annotations

import functools
import itertools
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch

from dino_vla.models.detector import GroundingDetector
from dino_vla.models.features import DinoFeatures
from dino_vla.models.random_init import ModelSources, build_random_models
from dino_vla.models.segmenter import Segmenter
from dino_vla.models.text import TextEncoder

ODD_SHAPE = (333, 517)  # non-square, odd height and width


def xdg_cache_home(base: Path) -> Path:
    """The XDG_CACHE_HOME under which ``default_cache_root()`` is the tiny models' root."""
    return base / "xdg-cache"


@functools.cache
def _build(base: str) -> ModelSources:
    # the same directory that choose_models(..., "tiny") uses once XDG_CACHE_HOME points at it
    return build_random_models("tiny", xdg_cache_home(Path(base)) / "dino_vla" / "random-models")


# Loaded models are cached by path so that the modules importing these fixtures share one copy.
_load_features = functools.cache(DinoFeatures.load)
_load_segmenter = functools.cache(Segmenter.load)
_load_text = functools.cache(TextEncoder.load)


@functools.cache
def _load_detector(path: str) -> GroundingDetector:
    # box_threshold 0 keeps every box, so that the tests see many detections from random weights
    return GroundingDetector.load(path, box_threshold=0.0, text_threshold=0.0, nms_iou=0.5,
                                  max_detections=900)


@pytest.fixture(scope="session", autouse=True)
def single_torch_thread():
    """The tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP
    threads waiting on each other turn a 30 ms forward pass into seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_sources(tmp_path_factory) -> ModelSources:
    return _build(str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="session")
def tiny_cache_home(tmp_path_factory, tiny_sources) -> Path:
    return xdg_cache_home(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def features_model(tiny_sources) -> DinoFeatures:
    return _load_features(tiny_sources.features)


@pytest.fixture(scope="session")
def detector(tiny_sources) -> GroundingDetector:
    return _load_detector(tiny_sources.detector)


@pytest.fixture(scope="session")
def segmenter(tiny_sources) -> Segmenter:
    return _load_segmenter(tiny_sources.segmenter)


@pytest.fixture(scope="session")
def text_encoder() -> TextEncoder:
    return _load_text()


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    image = skimage.data.coffee()
    assert image.shape == (400, 600, 3) and image.dtype == np.uint8
    return image


@pytest.fixture(scope="session")
def odd_image() -> np.ndarray:
    return np.random.default_rng(1234).integers(0, 256, (*ODD_SHAPE, 3), dtype=np.uint8)


@pytest.fixture(scope="session", params=["coffee", "odd"])
def image(request, coffee, odd_image) -> np.ndarray:
    """Both test images: the real photo and a random non-square odd-sized one."""
    return coffee if request.param == "coffee" else odd_image


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
