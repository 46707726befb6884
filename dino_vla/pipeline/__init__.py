"""One per-frame perception pipeline: features, detections and masks. The nodes (one stage each), the
CLI and the benchmarks all run this object, so what is tested is what runs."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import numpy as np

from dino_vla.config import MODEL_CHOICES
from dino_vla.colour import colour_names
from dino_vla.instruction import GroundingQuery, parse_instruction
from dino_vla.models.detector import GroundingDetector
from dino_vla.models.features import DinoFeatures
from dino_vla.models.segmenter import Segmenter
from dino_vla.types import Detections, Features, Masks, Provenance

STAGES = ("features", "detector", "segmenter")
_DETECTOR_SETTINGS = ("box_threshold", "text_threshold", "nms_iou", "max_detections")


@dataclass(frozen=True)
class PerceptionResult:
    query: GroundingQuery
    detections: Detections
    masks: Masks | None
    features: Features | None
    timings_ms: dict[str, float] = field(default_factory=dict)
    provenance: Provenance | None = None   # detected or tracked (DetectThenTrack); None from the per-frame run


def validate_image(image: np.ndarray) -> np.ndarray:
    """The models take (H, W, 3) uint8 RGB; anything else is a caller error worth a clear message."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {type(image).__name__} "
                         f"{getattr(image, 'dtype', '')} {shape}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"image too small: {image.shape[1]}x{image.shape[0]}")
    return image


class PerceptionPipeline:
    def __init__(self, features: DinoFeatures | None = None, detector: GroundingDetector | None = None,
                 segmenter: Segmenter | None = None):
        self.feature_extractor = features
        self.detector = detector
        self.segmenter = segmenter

    @classmethod
    def from_config(cls, params: dict[str, dict[str, Any]], stages: Iterable[str] = STAGES
                    ) -> "PerceptionPipeline":
        """Load the models of ``stages`` as described by validated node parameters (config.load_config)."""
        stages = tuple(stages)
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are {STAGES}")
        loaded: dict[str, Any] = {}
        if "features" in stages:
            p = params["features"]
            loaded["features"] = DinoFeatures.load(p["model"], p["device"], p["dtype"], p.get("compile", False))
        if "detector" in stages:
            p = params["detector"]
            loaded["detector"] = GroundingDetector.load(p["model"], p["device"], p["dtype"], p.get("compile", False),
                                                        **{k: p[k] for k in _DETECTOR_SETTINGS})
        if "segmenter" in stages:
            p = params["segmenter"]
            loaded["segmenter"] = Segmenter.load(p["model"], p["device"], p["dtype"], p.get("crop_context", 0.0),
                                                 p.get("compile", False))
        return cls(**loaded)

    def models(self) -> list:
        """The loaded stages' torch modules."""
        return [a.model for a in (self.feature_extractor, self.detector, self.segmenter) if a is not None]

    @property
    def device(self):
        """Where the loaded models are (torch.device)."""
        return next(self.models()[0].parameters()).device

    def to(self, device: str) -> int:
        """Every loaded stage's model to `device`; the bytes of GPU memory given back (models.loading.place)."""
        from dino_vla.models.loading import place

        return place(self.models(), device)

    def _require(self, stage: str, adapter):
        if adapter is None:
            raise RuntimeError(f"this pipeline was built without the {stage} stage")
        return adapter

    def extract_features(self, image: np.ndarray) -> Features:
        return self._require("features", self.feature_extractor).extract(validate_image(image))

    def detect(self, image: np.ndarray, query: GroundingQuery) -> Detections:
        return self._require("detector", self.detector).detect(validate_image(image), query.phrases)

    def segment(self, image: np.ndarray, detections: Detections) -> Masks:
        image = validate_image(image)
        if detections.image_size != image.shape[:2]:
            raise ValueError(f"detections are for a {detections.image_size} image, got {image.shape[:2]}")
        masks = self._require("segmenter", self.segmenter).segment(image, detections.boxes)
        # measured here, where the image is: the pick sees only masks and depth
        return replace(masks, colours=colour_names(image, masks.masks))

    def run(self, image: np.ndarray, instruction: str | GroundingQuery,
            segment: Callable[[np.ndarray, Detections], Masks] | None = None) -> PerceptionResult:
        """Every loaded stage on one frame, with per-stage wall times in milliseconds. segment: what makes the
        masks in place of self.segment (DetectThenTrack's, which may reuse earlier ones)."""
        query = instruction if isinstance(instruction, GroundingQuery) else parse_instruction(instruction)
        image = validate_image(image)
        timings: dict[str, float] = {}

        def timed(name, fn, *args):
            start = time.perf_counter()
            out = fn(*args)
            timings[name] = (time.perf_counter() - start) * 1e3
            return out

        feats = timed("features", self.extract_features, image) if self.feature_extractor else None
        dets = timed("detector", self.detect, image, query)
        masks = timed("segmenter", segment or self.segment, image, dets) if self.segmenter else None
        timings["total"] = sum(timings.values())
        return PerceptionResult(query, dets, masks, feats, timings)


@dataclass(frozen=True)
class ModelChoice:
    params: dict[str, dict[str, Any]]
    random_weights: bool
    notice: str | None  # one line for the user when the outputs will not be meaningful


def choose_models(params: dict[str, dict[str, Any]], choice: str = "auto", stages: Iterable[str] = STAGES
                  ) -> ModelChoice:
    """``pretrained``: the configured models, errors if missing. ``tiny``: random-weight models of the
    real architectures. ``auto``: pretrained where every stage's weights can be had, else tiny with a
    notice saying so and how to supply the weights."""
    from dino_vla.models.loading import how_to_supply, weights_obtainable
    from dino_vla.models.random_init import build_random_models

    if choice not in MODEL_CHOICES:
        raise ValueError(f"models must be one of {MODEL_CHOICES}, got {choice!r}")
    stages = tuple(stages)
    if choice == "pretrained":
        return ModelChoice(params, False, None)
    if choice == "auto":
        missing = [params[s]["model"] for s in stages if not weights_obtainable(params[s]["model"])]
        if not missing:
            return ModelChoice(params, False, None)
        notice = (f"NOTICE: no pretrained weights for {', '.join(missing)} can be loaded here, so tiny "
                  f"RANDOM-weight models run instead and the output is NOT meaningful; "
                  f"{how_to_supply(missing, '<stage>.model in config/perception.yaml')}.")
    else:
        notice = "NOTICE: --models tiny: tiny RANDOM-weight models, the output is NOT meaningful."
    sources = build_random_models("tiny")
    swapped = {stage: dict(p, model=getattr(sources, stage)) if stage in stages else p
               for stage, p in params.items()}
    return ModelChoice(swapped, True, notice)
