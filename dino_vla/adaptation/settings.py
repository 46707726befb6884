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


@dataclass(frozen=True)
class DetectorTraining:
    steps: int = 3000
    minutes: float = 0.0          # > 0: also stop after this much wall time (a checkpoint is written then)
    batch_size: int = 4           # per process (torchrun: each process draws its own)
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    instruction_share: float = 0.5   # prompts made of a recorded instruction's phrases; the rest name the frame's
                                     # objects (nouns, synonyms, colours) and maybe one that is not there
    validation_fraction: float = 0.1
    validation_frames: int = 32   # frames scored (box AP50, target top-1) at every checkpoint
    validate_every: int = 250
    seed: int = 0
    max_frames: int = 0           # 0: every frame of the dataset
    amp: bool = True              # bfloat16 autocast on CUDA (never on CPU)
