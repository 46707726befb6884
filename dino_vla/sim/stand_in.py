"""The simulator's segmentation standing in for Grounding DINO + SAM where no pretrained weights can be
had. Everything it produces is labelled with SOURCE, so no output can pass for model perception."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from dino_vla.instruction import OBJECT
from dino_vla.sim.mujoco_sim import RenderedFrame, TabletopSim
from dino_vla.types import Detections, Masks

SOURCE = "simulator ground truth"


def ground_truth_perception(sim: TabletopSim, frame: RenderedFrame, phrases: Sequence[str]
                            ) -> tuple[Detections, Masks]:
    """What a perfect detector + segmenter would return for the phrases of one instruction, in phrase
    order (score 1, so the first phrase's objects rank as the detector's would not: callers pick by phrase).
    Each instance is labelled with the phrase whose noun names its category, and its mask with its paint."""
    parts = [sim.ground_truth(phrase, frame) for phrase in phrases]
    h, w = frame.segmentation.shape
    detections = Detections(np.concatenate([d.boxes for d, _ in parts]).reshape(-1, 4).astype(np.float32),
                            np.concatenate([d.scores for d, _ in parts]).astype(np.float32),
                            tuple(p for d, _ in parts for p in d.phrases), (h, w))
    masks = Masks(np.concatenate([m.masks for _, m in parts]).reshape(-1, h, w),
                  np.concatenate([m.scores for _, m in parts]).astype(np.float32),
                  tuple(c for _, m in parts for c in m.colours))
    return detections, masks


def class_agnostic(detections: Detections) -> Detections:
    """The same detections, each labelled OBJECT: what a class-agnostic segmenter would give (the policy
    chooses among every visible object by itself; sim.ground_truth_all gives the detections)."""
    return replace(detections, phrases=(OBJECT,) * len(detections))
