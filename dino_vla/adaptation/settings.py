"""Settings of the perception trainings, without torch (the CLI builds its options from them)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SegmenterTraining:
    steps: int = 3000
    minutes: float = 0.0          # > 0: also stop after this much wall time (a checkpoint is written then)
    batch_size: int = 8
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    crop_context: float = 2.0     # 0: whole frames (the node's default); > 0: crops, as the node does with it
    box_jitter: float = 0.1
    train: str = "all"            # all | decoder (mask decoder + prompt encoder; the image encoder frozen)
    validation_fraction: float = 0.1
    validate_every: int = 250
    seed: int = 0
    max_frames: int = 0           # 0: every frame of the dataset
