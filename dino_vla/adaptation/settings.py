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
class BackboneDistillation:
    """DINOv2-style self-distillation of the features backbone (defaults sized for the tiny model on a CPU)."""

    steps: int = 3000
    minutes: float = 0.0             # > 0: also stop after this much wall time (a checkpoint is written then)
    batch_size: int = 32             # frames per step, each giving 2 global and `local_crops` local crops
    learning_rate: float = 5e-4      # peak, reached after warmup_steps, then cosine down to min_learning_rate
    min_learning_rate: float = 1e-6
    warmup_steps: int = 300
    weight_decay: float = 0.04       # cosine up to weight_decay_end over the run (DINO's schedule)
    weight_decay_end: float = 0.2
    clip_grad: float = 3.0
    teacher_momentum: float = 0.994  # EMA of the teacher, cosine up to 1 at the last step
    prototypes: int = 256            # K: the heads' output (small for a tiny model); collapse: teacher entropy -> log K
    head_hidden: int = 512
    head_bottleneck: int = 128
    student_temperature: float = 0.1
    teacher_temperature_start: float = 0.04
    teacher_temperature: float = 0.07
    teacher_temperature_warmup: int = 1000   # steps of the linear teacher-temperature warm-up
    centering: str = "sinkhorn"      # sinkhorn (DINOv2's Sinkhorn-Knopp) | centre (DINO's EMA centre)
    centre_momentum: float = 0.9
    freeze_last_layer_steps: int = 300       # the prototypes stay put while the features settle
    global_size: int = 224
    local_size: int = 98
    local_crops: int = 4
    global_scale: tuple[float, float] = (0.08, 0.5)   # crop area as a fraction of the frame: table-top objects
    local_scale: tuple[float, float] = (0.01, 0.08)   # fill a few % of a frame, so crops are closer than DINO's
    frame_short_side: int = 240      # frames are kept in memory at this size (decoded once)
    koleo_weight: float = 0.1
    ibot_weight: float = 1.0
    mask_probability: float = 0.5    # share of global crops that get iBOT masks...
    mask_ratio: tuple[float, float] = (0.1, 0.5)      # ...covering this share of their patches
    gram_weight: float = 0.0         # > 0: Gram anchoring of the patch features to the starting weights (DINOv3)
    log_every: int = 25
    save_every: int = 250
    seed: int = 0
    max_frames: int = 0              # 0: every frame
