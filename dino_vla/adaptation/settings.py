"""Settings of the perception trainings, without torch (the CLI builds its options from them)."""
from __future__ import annotations

from dataclasses import dataclass

# the crops pretrain-backbone learns from: windows of frames (DINO's), or objects cut out by depth
BACKBONE_VIEWS = ("frames", "objects")
# the colour-blind probe's paints: one colour per scene for all its objects (colour-blind), or the catalogue's
PROBE_PAINTS = ("one", "usual")


@dataclass(frozen=True)
class SegmenterTraining:
    steps: int = 1000
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


@dataclass(frozen=True)
class BackboneDistillation:
    """DINOv2-style self-distillation of the features backbone (defaults sized for the tiny model on a CPU)."""

    steps: int = 1000
    minutes: float = 0.0             # > 0: also stop after this much wall time (a checkpoint is written then)
    batch_size: int = 16             # frames per step, each giving 2 global and `local_crops` local crops
    learning_rate: float = 1e-3      # peak, reached after warmup_steps, then cosine down to min_learning_rate
    min_learning_rate: float = 1e-6
    warmup_steps: int = 100
    weight_decay: float = 0.04       # cosine up to weight_decay_end over the run (DINO's schedule)
    weight_decay_end: float = 0.2
    clip_grad: float = 3.0
    teacher_momentum: float = 0.994  # EMA of the teacher, cosine up to 1 at the last step
    prototypes: int = 64             # K: the heads' output (small for a tiny model); collapse: teacher entropy -> log K
    head_hidden: int = 512
    head_bottleneck: int = 128
    student_temperature: float = 0.1
    # DINO warms the teacher up from 0.04 to 0.07; the tiny random model's heads then drifted to uniform targets
    # (0.99 log K after 300 steps), at 0.02 -> 0.04 they stayed at 0.92 log K
    teacher_temperature_start: float = 0.02
    teacher_temperature: float = 0.04
    teacher_temperature_warmup: int = 200    # steps of the linear teacher-temperature warm-up
    centering: str = "sinkhorn"      # sinkhorn (DINOv2's Sinkhorn-Knopp) | centre (DINO's EMA centre)
    centre_momentum: float = 0.9
    freeze_last_layer_steps: int = 100       # the prototypes stay put while the features settle
    global_size: int = 224           # what the features node sees
    local_size: int = 98
    local_crops: int = 4
    region_scale: tuple[float, float] = (0.02, 0.2)   # each frame gives a window of this share of its area, as
                                                      # the image the crops are cut from: objects come out large
    global_scale: tuple[float, float] = (0.32, 1.0)   # crop area as a fraction of that window (DINO's)
    local_scale: tuple[float, float] = (0.05, 0.32)
    # DINO turns hue by up to 0.1 and greys 20 % of views; a simulator's objects come in a few flat paints, and
    # matching views by colour is then the easy way out: any hue, and half the views grey, leave shape
    hue_jitter: float = 0.5          # the largest hue turn, as a fraction of the colour circle (0.5: any hue)
    greyscale_probability: float = 0.5
    frame_short_side: int = 480      # frames are kept in memory at this size (decoded once): ~1 MB each
    # views="objects": objects cut out of a dataset's frames by depth (object_regions), each a square crop of
    # global_size pixels; the teacher sees an object neutral (its own shading in one grey on a flat background)
    # and the student sees it in a random paint on a random background (OBJECT_VIEWS below)
    views: str = "frames"            # BACKBONE_VIEWS
    table_height_m: float = 0.40     # the support surface in the dataset's base frame (objects stand above it)
    min_object_pixels: int = 200     # smaller depth regions are not cut out
    head_batch_norm: bool = False    # BatchNorm in the heads' MLP (DINO's use_bn_in_head)
    koleo_weight: float = 0.1
    ibot_weight: float = 1.0
    mask_probability: float = 0.5    # share of global crops that get iBOT masks...
    mask_ratio: tuple[float, float] = (0.1, 0.5)      # ...covering this share of their patches
    gram_weight: float = 0.0         # > 0: Gram anchoring of the patch features to the starting weights (DINOv3)
    log_every: int = 25
    save_every: int = 250
    seed: int = 0
    max_frames: int = 0              # 0: every frame


# What views="objects" changes unless given otherwise (the settings of the run measured in the README): object
# crops are small, square windows keep the object's proportions (a can and a jar differ in them), and without
# BatchNorm in the heads the teacher's targets went uniform within 400 steps (every image's head output alike)
OBJECT_VIEWS = {"global_size": 112, "local_size": 56, "global_scale": (0.7, 1.0), "local_scale": (0.25, 0.5),
                "learning_rate": 3e-4, "teacher_temperature": 0.02, "ibot_weight": 0.0, "head_batch_norm": True}


def backbone_distillation(views: str = "frames", **given) -> BackboneDistillation:
    """Settings for `views`: the dataclass's defaults, then OBJECT_VIEWS for objects, then what is `given` (None:
    not given)."""
    preset = OBJECT_VIEWS if views == "objects" else {}
    return BackboneDistillation(views=views, **{**preset, **{k: v for k, v in given.items() if v is not None}})
