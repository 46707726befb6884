"""Self-distillation of the DINOv2 backbone on a robot's own unlabelled frames (`dino-vla pretrain-backbone`).

The recipe is DINOv2's (Oquab et al. 2023), learnt from facebookresearch/dinov2 and written anew for a
transformers Dinov2Model: a student and an EMA teacher of the same backbone, each with a projection head (MLP,
L2-normalised bottleneck, weight-normalised last layer onto K prototypes, shared by the image-level DINO loss and
the patch-level iBOT loss). Each frame gives 2 global and a few local crops; the teacher sees the global crops, the
student all of them, with some global crops' patches replaced by the model's mask token (`bool_masked_pos`). The
teacher's outputs are centred (Sinkhorn-Knopp, or DINO's EMA centre) and sharpened (a temperature warmed up from
0.04 to 0.07); the student is trained to predict them: DINO loss on the class token between views, iBOT loss on
the masked patches, plus KoLeo (spreads the class tokens in a batch apart). When starting from pretrained
weights, Gram anchoring (DINOv3) keeps the patch features' pairwise similarities close to the starting model's.

With `views="objects"` (a dataset with depth), the crops are objects instead: each region that stands out of
the table by depth (geometry.depth_region) is cut out as a square crop with its region as alpha. The teacher sees
each global crop's object neutral, its own shading in one grey on a flat background, so its targets can only come
from the object's outline and shading; the student sees the same window with the object in a random paint on a
random background (a window of one of the frames, or noise), and local windows likewise, so it must learn to see past
paint and background. The tiny random DINOv2 already tells categories apart on neutral crops (55 % k-NN on the
probe's objects) but not on painted ones (14 %): this is what the views teach. The heads then carry BatchNorm
(DINO's use_bn_in_head), without which their outputs were alike for every image and the targets went uniform.

Collapse is watched: the teacher's per-sample target entropy (it reaches log K when the teacher says the same
uniform thing for every image) and the distance of each class token to its nearest neighbour in the batch (it
reaches 0 when every image maps to one point).

The teacher is the result (as in DINO): written as a transformers Dinov2Model directory (safetensors +
processor) that DinoFeatures and `dino-vla train --backbone` load; beside it the student and heads
(DISTILLATION_FILE), the optimiser and RNG (training_state.py), and TRAINING_FILE (settings, started_from,
history)."""
from __future__ import annotations

import copy
import functools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, Dinov2Model

from dino_vla.adaptation.settings import BACKBONE_VIEWS, BackboneDistillation
from dino_vla.dataset.format import Dataset, DatasetError
from dino_vla.geometry.depth_region import object_regions
from dino_vla.models.loading import ModelUnavailableError, load_model_and_processor
from dino_vla.models.segmenter import OBJECT_CONTEXT, crop_window
from dino_vla.training_state import (TrainingStateError, load_training_state, save_training_state,
                                     write_training_record)
from dino_vla.types import IMAGE_SUFFIXES, tight_box

TRAINING_FILE = "pretrain_backbone.json"
DISTILLATION_FILE = "distillation.safetensors"
DINOV2_TYPES = ("dinov2",)
NEUTRAL_PAINT = 150.0         # the teacher's object grey and background grey (0-255)
NEUTRAL_BACKGROUND = 60.0


# ---- frames --------------------------------------------------------------------------------------------------

def unlabelled_frames(data: str | Path, short_side: int, max_frames: int = 0, seed: int = 0) -> list[np.ndarray]:
    """The RGB frames of a dataset in the project's format, or of a folder of images, resized so that their
    shorter side is `short_side` (all kept in memory); with max_frames, a seeded choice of that many."""
    root = Path(data)
    if (root / "meta" / "info.json").is_file():
        dataset = Dataset(root)
        count, read = dataset.num_frames, dataset.rgb
    elif root.is_dir() and not (root / "meta").exists():
        files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        count = len(files)

        def read(index: int) -> np.ndarray:
            try:
                return np.asarray(Image.open(files[index]).convert("RGB"))
            except OSError as err:
                raise DatasetError(f"{files[index]} is not a readable image ({err})") from None
    elif root.is_dir():
        Dataset(root)   # raises what is wrong with it
        raise DatasetError(f"{root} is not a dataset")
    else:
        raise DatasetError(f"{root} is neither a dataset nor a folder of images")
    if count == 0:
        raise DatasetError(f"{root} holds no frames (a dataset, or a folder of {', '.join(IMAGE_SUFFIXES)} images)")
    frames = []
    for index in frame_choice(count, max_frames, np.random.default_rng(seed)):
        rgb = read(index)
        scale = short_side / min(rgb.shape[:2])
        frames.append(cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)),
                                 interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR))
    return frames


def frame_choice(count: int, max_frames: int, rng: np.random.Generator) -> list[int]:
    """The indices of the frames a run uses, in order: every frame, or a random choice of max_frames (> 0)."""
    return sorted((rng.permutation(count)[:max_frames] if max_frames else np.arange(count)).tolist())


# ---- multi-crop ----------------------------------------------------------------------------------------------

def random_window(height: int, width: int, scale: tuple[float, float], rng: np.random.Generator
                  ) -> tuple[int, int, int, int]:
    """x0, y0, width, height of a window of area `scale` of the image's, aspect ratio 3:4 to 4:3 (log-uniform)."""
    for _ in range(10):
        area = height * width * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= width and 0 < ch <= height:
            break
    else:
        cw = ch = min(height, width)
    return int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1)), cw, ch


def random_resized_crop(image: np.ndarray, size: int, scale: tuple[float, float], rng: np.random.Generator
                        ) -> np.ndarray:
    x0, y0, cw, ch = random_window(image.shape[0], image.shape[1], scale, rng)
    return cv2.resize(image[y0:y0 + ch, x0:x0 + cw], (size, size), interpolation=cv2.INTER_LINEAR)


def photometric(image: np.ndarray, rng: np.random.Generator, blur: float, solarize: float, hue: float = 0.1,
                greyscale: float = 0.2) -> np.ndarray:
    """DINO's view augmentations: flip, colour jitter (p 0.8; hue turned by up to `hue` of a full turn),
    greyscale (p `greyscale`), blur and solarisation."""
    if rng.random() < 0.5:
        image = image[:, ::-1]
    out = image.astype(np.float32)
    if rng.random() < 0.8:
        out = out * rng.uniform(0.6, 1.4)                                          # brightness
        out = (out - out.mean()) * rng.uniform(0.6, 1.4) + out.mean()              # contrast
        grey = out.mean(axis=2, keepdims=True)
        out = (out - grey) * rng.uniform(0.8, 1.2) + grey                          # saturation
        hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
        turn = int(round(hue * 180))                                              # OpenCV's hue: 0..179
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.integers(-turn, turn + 1))) % 180
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
    if rng.random() < greyscale:
        out = np.repeat(out.mean(axis=2, keepdims=True), 3, axis=2)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < blur:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.1, 2.0))
    if rng.random() < solarize:
        out = np.where(out >= 128, 255 - out, out).astype(np.uint8)
    return out


@dataclass
class Views:
    global_crops: torch.Tensor     # (2B, 3, G, G): crop 0 of every frame, then crop 1 of every frame
    local_crops: torch.Tensor      # (LB, 3, l, l), same order: local crop j of frame i at j * B + i
    masks: torch.Tensor            # (2B, patches) bool: patches the student sees as mask tokens
    teacher_crops: torch.Tensor | None = None   # (2B, 3, G, G) what the teacher sees instead of global_crops

    def to(self, device: torch.device) -> "Views":
        return Views(self.global_crops.to(device), self.local_crops.to(device), self.masks.to(device),
                     None if self.teacher_crops is None else self.teacher_crops.to(device))


def _tensor(crops: list[np.ndarray], mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    if not crops:
        return torch.zeros(0)
    x = (np.stack(crops).astype(np.float32) / 255.0 - mean) / std
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def ibot_masks(images: int, side: int, settings: BackboneDistillation, rng: np.random.Generator) -> torch.Tensor:
    """(images, side * side) bool: mask_probability of the global crops get mask_ratio of their patches masked."""
    s = settings
    masks = np.zeros((images, side * side), bool)
    masked = rng.permutation(images)[:round(s.mask_probability * images)] if s.ibot_weight > 0 else []
    for row in masked:
        masks[row, rng.permutation(side * side)[:max(1, round(rng.uniform(*s.mask_ratio) * side * side))]] = True
    return torch.from_numpy(masks)


def draw_views(frames: list[np.ndarray], chosen: list[int], settings: BackboneDistillation, patch_size: int,
               mean: np.ndarray, std: np.ndarray, rng: np.random.Generator) -> Views:
    """The crops and iBOT masks of one batch, all drawn from `rng`."""
    s = settings
    # DINO's views of one image overlap (global crops cover 32-100 % of it): the image each frame gives here is a
    # window of it (region_scale), so that table-top objects come out large; views of whole frames would show
    # them a few pixels wide, and crops small enough to enlarge them rarely overlap (tried: uniform collapse)
    regions = []
    for i in chosen:
        x0, y0, cw, ch = random_window(*frames[i].shape[:2], s.region_scale, rng)
        regions.append(frames[i][y0:y0 + ch, x0:x0 + cw])
    look = {"hue": s.hue_jitter, "greyscale": s.greyscale_probability}
    globals_ = [[photometric(random_resized_crop(region, s.global_size, s.global_scale, rng), rng,
                             blur=1.0 if k == 0 else 0.1, solarize=0.0 if k == 0 else 0.2, **look)
                 for region in regions] for k in range(2)]
    locals_ = [[photometric(random_resized_crop(region, s.local_size, s.local_scale, rng), rng, 0.5, 0.0, **look)
                for region in regions] for _ in range(s.local_crops)]
    return Views(_tensor(globals_[0] + globals_[1], mean, std), _tensor(sum(locals_, []), mean, std),
                 ibot_masks(2 * len(chosen), s.global_size // patch_size, s, rng))


# ---- object views --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DepthCutObjects:
    crops: list[np.ndarray]        # (S, S, 4) uint8: RGB around an object, alpha 255 on its depth region
    backgrounds: list[np.ndarray]  # (S, S, 3) uint8: windows of the same frames, for the student's backgrounds
    frames: int                    # frames they were cut from


def object_crops(data: str | Path, settings: BackboneDistillation) -> DepthCutObjects:
    """Every object region of the dataset's frames (or of max_frames of them, a seeded choice) with at least
    min_object_pixels pixels, cut out as a square crop of global_size pixels, OBJECT_CONTEXT times its box."""
    root = Path(data)
    if not (root / "meta" / "info.json").is_file():
        raise DatasetError(f"views 'objects' cuts objects out by depth: {root} must be a dataset (record-sim or "
                           f"the recorder node), not a folder of images")
    dataset = Dataset(root)
    if dataset.num_frames == 0:
        raise DatasetError(f"{root} holds no frames")
    s, side = settings, settings.global_size
    rng = np.random.default_rng(s.seed)
    chosen = frame_choice(dataset.num_frames, s.max_frames, rng)
    crops, backgrounds = [], []
    for index in chosen:
        frame = dataset.frame(index)
        regions = object_regions(frame.depth_frame(), frame.camera_to_base, s.table_height_m)
        for label in range(1, int(regions.labels.max()) + 1):
            mask = regions.labels == label
            if mask.sum() < s.min_object_pixels:
                continue
            x0, y0, x1, y1 = crop_window(tight_box(mask), mask.shape, OBJECT_CONTEXT)
            rgba = np.dstack([frame.rgb[y0:y1, x0:x1], mask[y0:y1, x0:x1].astype(np.uint8) * 255])
            crops.append(cv2.resize(rgba, (side, side), interpolation=cv2.INTER_LINEAR))
        for _ in range(2):
            x0, y0, cw, ch = random_window(*frame.rgb.shape[:2], s.region_scale, rng)
            backgrounds.append(cv2.resize(frame.rgb[y0:y0 + ch, x0:x0 + cw], (side, side),
                                          interpolation=cv2.INTER_AREA))
    if not crops:
        raise DatasetError(f"no object of {s.min_object_pixels} pixels or more stands out of the table "
                           f"(table_height_m {s.table_height_m}) by depth in the {len(chosen)} frames of {root}")
    return DepthCutObjects(crops, backgrounds, len(chosen))


def painted(crop: np.ndarray, paint: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The object (the crop's alpha, grown by a pixel so that no rim of its old paint is left) in `paint` (RGB,
    0-255) with its own shading (luminance over its median), on `background` (H, W, 3)."""
    rgb = crop[..., :3].astype(np.float32)
    alpha = cv2.dilate(crop[..., 3], np.ones((3, 3), np.uint8))
    region = alpha > 0
    luminance = rgb.mean(axis=2)
    own = crop[..., 3] > 127
    if own.any():
        shading = np.clip(luminance / max(float(np.median(luminance[own])), 8.0), 0.0, 2.5)
        rgb[region] = np.clip(shading[region, None] * paint, 0, 255)
    a = alpha[..., None].astype(np.float32) / 255.0
    return (rgb * a + background * (1 - a)).astype(np.uint8)


def square_window(side: int, scale: tuple[float, float], rng: np.random.Generator) -> tuple[int, int, int]:
    """x0, y0 and side of a square window of `scale` of a square image's area: the object keeps its proportions."""
    w = max(1, round(side * math.sqrt(rng.uniform(*scale))))
    return int(rng.integers(0, side - w + 1)), int(rng.integers(0, side - w + 1)), w


def _cut(image: np.ndarray, window: tuple[int, int, int], size: int) -> np.ndarray:
    x0, y0, w = window
    return cv2.resize(image[y0:y0 + w, x0:x0 + w], (size, size), interpolation=cv2.INTER_LINEAR)


def draw_object_views(objects: DepthCutObjects, chosen: list[int], settings: BackboneDistillation, patch_size: int,
                      mean: np.ndarray, std: np.ndarray, rng: np.random.Generator) -> Views:
    """One batch of object views, all drawn from `rng`: the teacher's neutral global crops, the student's painted
    ones through the same windows (then mirrored half the time, as DINO's flips), the student's painted local
    crops, and iBOT masks (none: object views refuse iBOT)."""
    s = settings
    side = objects.crops[0].shape[0]
    flat = np.full((side, side, 3), NEUTRAL_BACKGROUND, np.float32)
    neutral_paint = np.full(3, NEUTRAL_PAINT, np.float32)

    def student(crop: np.ndarray, window: tuple[int, int, int], size: int, blur: float, solarize: float):
        if rng.random() < 0.5:
            background = objects.backgrounds[int(rng.integers(len(objects.backgrounds)))].astype(np.float32)
        else:
            background = rng.uniform(0, 255, 3) + rng.normal(0, 20, (side, side, 3))
        image = painted(crop, rng.uniform(20, 235, 3), np.clip(background, 0, 255))
        return photometric(_cut(image, window, size), rng, blur, solarize, hue=s.hue_jitter,
                           greyscale=s.greyscale_probability)

    teacher, globals_, locals_ = [[], []], [[], []], [[] for _ in range(s.local_crops)]
    for i in chosen:
        crop = objects.crops[i]
        neutral = painted(crop, neutral_paint, flat)
        for k in range(2):
            window = square_window(side, s.global_scale, rng)
            teacher[k].append(_cut(neutral, window, s.global_size))
            globals_[k].append(student(crop, window, s.global_size, 1.0 if k == 0 else 0.1, 0.0 if k == 0 else 0.2))
        for j in range(s.local_crops):
            locals_[j].append(student(crop, square_window(side, s.local_scale, rng), s.local_size, 0.5, 0.0))
    return Views(_tensor(globals_[0] + globals_[1], mean, std), _tensor(sum(locals_, []), mean, std),
                 ibot_masks(2 * len(chosen), s.global_size // patch_size, s, rng),
                 _tensor(teacher[0] + teacher[1], mean, std))


# ---- heads and losses ----------------------------------------------------------------------------------------

class ProjectionHead(torch.nn.Module):
    """DINO's head: a 3-layer MLP to an L2-normalised bottleneck, then a weight-normalised linear layer onto the
    prototypes whose norm is fixed at 1 (only its direction is learnt)."""

    def __init__(self, dim: int, hidden: int, bottleneck: int, prototypes: int, batch_norm: bool = False):
        super().__init__()
        # with batch_norm, each call normalises over its own rows: the student's global and local crops apart
        # (DINO's wrapper runs the head once over both), as in the measured object-view run

        def norm() -> list[torch.nn.Module]:
            return [torch.nn.BatchNorm1d(hidden)] if batch_norm else []

        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden), *norm(), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, hidden), *norm(), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, bottleneck))
        for layer in self.mlp:
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.trunc_normal_(layer.weight, std=0.02)
                torch.nn.init.zeros_(layer.bias)
        last = torch.nn.Linear(bottleneck, prototypes, bias=False)
        self.last = torch.nn.utils.parametrizations.weight_norm(last)
        self.last.parametrizations.weight.original0.data.fill_(1.0)
        self.last.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))

    def last_layer_parameters(self) -> list[torch.nn.Parameter]:
        return [self.last.parametrizations.weight.original1]


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """Teacher targets (N, K) whose prototypes are used equally over the batch (DINOv2's centring)."""
    q = torch.exp((logits.float() - logits.float().max()) / temperature).t()    # (K, N)
    q /= q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n
    return (q * n).t()


@torch.no_grad()
def centred_targets(logits: torch.Tensor, centre: torch.Tensor, temperature: float) -> torch.Tensor:
    """DINO's centring: the EMA of the teacher's mean output subtracted before sharpening."""
    return F.softmax((logits.float() - centre) / temperature, dim=-1)


def cross_entropy(targets: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row cross-entropy of the student's sharpened distribution against the targets."""
    return -(targets * F.log_softmax(student_logits.float() / temperature, dim=-1)).sum(-1)


def nearest_neighbour_distance(x: torch.Tensor) -> torch.Tensor:
    """Per row: Euclidean distance of the L2-normalised row to its nearest other row."""
    x = F.normalize(x.float(), dim=-1)
    dots = x @ x.t()
    dots.fill_diagonal_(-2.0)
    return (x - x[dots.argmax(dim=1)]).norm(dim=-1)


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimate (Sablayrolles et al. 2018): -mean log nearest-neighbour distance."""
    return -torch.log(nearest_neighbour_distance(x) + eps).mean()


def gram_loss(student_patches: torch.Tensor, anchor_patches: torch.Tensor) -> torch.Tensor:
    """DINOv3's Gram anchoring: the patch-to-patch cosine similarities of each image kept at the anchor's."""
    s, a = F.normalize(student_patches.float(), dim=-1), F.normalize(anchor_patches.float(), dim=-1)
    return (s @ s.transpose(1, 2) - a @ a.transpose(1, 2)).pow(2).mean()


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Per-row entropy in nats."""
    return -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum(-1)


@dataclass(frozen=True)
class CollapseWatch:
    """The two ways self-distillation collapses, measured on one batch."""

    teacher_entropy: float      # mean per-image entropy of the teacher's targets; log K: uniform collapse
    log_k: float
    nn_distance: float          # mean distance of a normalised class token to its batch neighbour; 0: one point

    @property
    def collapse(self) -> str:
        """"uniform" (the teacher says the same flat thing for every image: what a random start looks like
        too), "one point" (every image the same class token), or "" (neither)."""
        if self.nn_distance < 0.01:
            return "one point"
        return "uniform" if self.teacher_entropy > 0.95 * self.log_k else ""

    @property
    def collapsed(self) -> bool:
        return bool(self.collapse)

    @classmethod
    def of(cls, targets: torch.Tensor, cls_tokens: torch.Tensor) -> "CollapseWatch":
        return cls(float(entropy(targets).mean()), math.log(targets.shape[-1]),
                   float(nearest_neighbour_distance(cls_tokens).mean()))


def cosine(start: float, end: float, step: int, steps: int) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(1, steps)))


def learning_rate(settings: BackboneDistillation, step: int) -> float:
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    return cosine(settings.learning_rate, settings.min_learning_rate, step - settings.warmup_steps,
                  settings.steps - settings.warmup_steps)


def teacher_temperature(settings: BackboneDistillation, step: int) -> float:
    if step >= settings.teacher_temperature_warmup:
        return settings.teacher_temperature
    return settings.teacher_temperature_start + (settings.teacher_temperature - settings.teacher_temperature_start) \
        * step / settings.teacher_temperature_warmup


# ---- the distillation ----------------------------------------------------------------------------------------

class Distillation(torch.nn.Module):
    """Student, teacher, their heads, DINO's centre, and the Gram anchor when there is one."""

    def __init__(self, backbone: Dinov2Model, settings: BackboneDistillation):
        super().__init__()
        self.settings = settings
        dim = backbone.config.hidden_size
        self.student = backbone
        self.student_head = ProjectionHead(dim, settings.head_hidden, settings.head_bottleneck, settings.prototypes,
                                           settings.head_batch_norm)
        self.teacher = copy.deepcopy(backbone)
        self.teacher_head = copy.deepcopy(self.student_head)
        for p in [*self.teacher.parameters(), *self.teacher_head.parameters()]:
            p.requires_grad_(False)
        # DINO's EMA centres, one for the class tokens and one for the patches (unused with Sinkhorn-Knopp)
        self.register_buffer("centre", torch.zeros(1, settings.prototypes))
        self.register_buffer("patch_centre", torch.zeros(1, settings.prototypes))
        self.anchor = None
        if settings.gram_weight > 0:
            self.anchor = copy.deepcopy(backbone).eval()
            for p in self.anchor.parameters():
                p.requires_grad_(False)

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """Biases, norms and the tokens are not decayed (as in DINO)."""
        decay, keep = [], []
        for name, p in [*self.student.named_parameters(), *self.student_head.named_parameters()]:
            if p.requires_grad:
                (keep if p.ndim <= 1 or name.endswith(("token", "embeddings.position_embeddings")) else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]

    def _targets(self, logits: torch.Tensor, temperature: float, centre: torch.Tensor) -> torch.Tensor:
        if self.settings.centering == "sinkhorn":
            return sinkhorn_knopp(logits, temperature)
        targets = centred_targets(logits, centre, temperature)
        m = self.settings.centre_momentum
        centre.mul_(m).add_((1 - m) * logits.float().mean(dim=0, keepdim=True))
        return targets

    def losses(self, views: Views, temperature: float) -> tuple[torch.Tensor, dict[str, float], CollapseWatch]:
        s = self.settings
        n = views.global_crops.shape[0]
        with torch.no_grad():
            teacher_crops = views.global_crops if views.teacher_crops is None else views.teacher_crops
            hidden = self.teacher(pixel_values=teacher_crops).last_hidden_state
            # token 0 is CLS; any register tokens sit between it and the patch tokens
            patches = hidden[:, -views.masks.shape[1]:]
            cls_targets = self._targets(self.teacher_head(hidden[:, 0]), temperature, self.centre)
            patch_targets = self._targets(self.teacher_head(patches[views.masks]), temperature, self.patch_centre) \
                if views.masks.any() else None
            anchor = self.anchor(pixel_values=views.global_crops).last_hidden_state[:, -views.masks.shape[1]:] \
                if self.anchor is not None else None
        student = self.student(pixel_values=views.global_crops, bool_masked_pos=views.masks).last_hidden_state
        student_cls = [self.student_head(student[:, 0])]
        if len(views.local_crops):
            student_cls.append(self.student_head(self.student(pixel_values=views.local_crops).last_hidden_state[:, 0]))
        student_logits = torch.cat(student_cls)                 # global views then local views, B rows each
        b = n // 2
        teacher_views = cls_targets.view(2, b, -1)
        student_views = student_logits.view(-1, b, student_logits.shape[-1])
        # a teacher crop other than the student's makes the same view a pair to learn from too
        terms = [cross_entropy(teacher_views[t], student_views[v], s.student_temperature).mean()
                 for t in range(2) for v in range(len(student_views)) if v != t or views.teacher_crops is not None]
        dino = torch.stack(terms).mean()
        loss, parts = dino, {"dino": dino.item()}
        if patch_targets is not None:
            per_patch = cross_entropy(patch_targets, self.student_head(student[:, -views.masks.shape[1]:][views.masks]),
                                      s.student_temperature)
            # each masked image weighs the same whatever its number of masked patches (as in iBOT)
            weights = (1.0 / views.masks.sum(1).clamp(min=1)).unsqueeze(1).expand_as(views.masks)[views.masks]
            ibot = (per_patch * weights).sum() / views.masks.any(1).sum()
            loss = loss + s.ibot_weight * ibot
            parts["ibot"] = ibot.item()
        if s.koleo_weight > 0:
            koleo = sum(koleo_loss(c) for c in student[:, 0].view(2, b, -1)) / 2
            loss = loss + s.koleo_weight * koleo
            parts["koleo"] = koleo.item()
        if anchor is not None:
            gram = gram_loss(student[:, -views.masks.shape[1]:], anchor)
            loss = loss + s.gram_weight * gram
            parts["gram"] = gram.item()
        parts["loss"] = loss.item()
        return loss, parts, CollapseWatch.of(cls_targets, hidden[:, 0])

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        for student, teacher in ((self.student, self.teacher), (self.student_head, self.teacher_head)):
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(momentum).add_((1 - momentum) * ps.detach())


def check_backbone_source(source: str) -> None:
    """A directory holding another architecture is refused with what it holds."""
    config = Path(source) / "config.json"
    if config.is_file():
        kind = json.loads(config.read_text()).get("model_type")
        if kind not in DINOV2_TYPES:
            raise ModelUnavailableError(f"{source} holds a {kind!r} model, not a DINOv2 backbone ({DINOV2_TYPES[0]})")


def pretrain_backbone(data: str | Path, out: str | Path, model_source: str,
                      settings: BackboneDistillation = BackboneDistillation(), resume: bool = False,
                      device: str = "cpu", threads: int = 0,
                      progress: Callable[[int, dict], None] | None = None) -> dict:
    """Self-distil the DINOv2 backbone at `model_source` (or continue the run in `out`) on the frames of `data`;
    `out` becomes a Dinov2Model directory (the teacher). Returns the summary."""
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    if resume and not (out / TRAINING_FILE).is_file():
        raise TrainingStateError(f"{out} has no {TRAINING_FILE} to resume from")
    if not resume and (out / TRAINING_FILE).is_file():
        raise TrainingStateError(f"{out} already holds a pretrained backbone; --resume continues it, or choose "
                                 f"another --out")
    record = json.loads((out / TRAINING_FILE).read_text()) if resume else {}
    if resume:
        saved = {k: tuple(v) if isinstance(v, list) else v for k, v in record["settings"].items()}
        settings = BackboneDistillation(**{**saved, "steps": settings.steps, "minutes": settings.minutes})
    _validate(settings)
    check_backbone_source(model_source)
    model, processor = load_model_and_processor(Dinov2Model, AutoImageProcessor, model_source, device, "float32",
                                                what="DINOv2 backbone", parameter="--model")
    if settings.views == "objects":
        objects = object_crops(data, settings)
        items, frame_count, counts = objects.crops, objects.frames, {"objects": len(objects.crops)}
        draw = functools.partial(draw_object_views, objects)
    else:
        items = unlabelled_frames(data, settings.frame_short_side, settings.max_frames, settings.seed)
        frame_count, counts = len(items), {}
        draw = functools.partial(draw_views, items)
    torch.manual_seed(settings.seed)
    net = Distillation(model, settings).to(model.device)
    optimizer = torch.optim.AdamW(net.parameter_groups(settings.weight_decay), lr=settings.learning_rate)
    step, history = 0, []
    if resume:
        state = load_file(str(out / DISTILLATION_FILE), device=str(model.device))
        teacher_state = {f"teacher.{k}": v for k, v in Dinov2Model.from_pretrained(out).state_dict().items()}
        net.load_state_dict({**state, **teacher_state})
        step = load_training_state(out, optimizer)
        history = record["history"]
    mean = np.asarray(processor.image_mean, np.float32)
    std = np.asarray(processor.image_std, np.float32)
    patch = int(model.config.patch_size)
    started, last = time.monotonic(), {}
    net.train()
    while step < settings.steps and not (settings.minutes and time.monotonic() - started > 60 * settings.minutes):
        # the batch depends only on (seed, step): a resumed run draws the same crops and masks
        rng = np.random.default_rng([settings.seed, step])
        chosen = rng.integers(0, len(items), settings.batch_size).tolist()
        views = draw(chosen, settings, patch, mean, std, rng).to(model.device)
        lr = learning_rate(settings, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.param_groups[0]["weight_decay"] = cosine(settings.weight_decay, settings.weight_decay_end, step,
                                                           settings.steps)
        temperature = teacher_temperature(settings, step)
        loss, parts, watch = net.losses(views, temperature)
        if not math.isfinite(parts["loss"]):
            raise FloatingPointError(f"step {step}: the loss is {parts['loss']} ({parts})")
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], settings.clip_grad)
        if step < settings.freeze_last_layer_steps:
            for p in net.student_head.last_layer_parameters():
                p.grad = None
        optimizer.step()
        net.update_teacher(cosine(settings.teacher_momentum, 1.0, step, settings.steps))
        step += 1
        last = {**parts, "teacher_entropy": watch.teacher_entropy, "log_k": watch.log_k,
                "nn_distance": watch.nn_distance, "collapse": watch.collapse, "lr": lr,
                "teacher_temperature": temperature}
        if progress:
            progress(step, last)
        if step % settings.log_every == 0 or step == settings.steps:
            history.append({"step": step, "minutes": round((time.monotonic() - started) / 60, 2),
                            **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in last.items()}})
        if step % settings.save_every == 0:
            _save(out, net, processor, optimizer, step, settings, history, model_source)
    _save(out, net, processor, optimizer, step, settings, history, model_source)
    entropies = [h["teacher_entropy"] for h in history]
    return {"out": str(out), "steps": step, "frames": frame_count, **counts,
            "minutes": round((time.monotonic() - started) / 60, 2),
            "log_k": round(math.log(settings.prototypes), 4),
            "teacher_entropy": round(last["teacher_entropy"], 4) if last else None,
            "max_teacher_entropy": round(max(entropies), 4) if entropies else None,
            "nn_distance": round(last["nn_distance"], 4) if last else None,
            "collapse": last.get("collapse", ""),
            "last": {k: round(v, 4) for k, v in last.items() if isinstance(v, float)}}


def _validate(s: BackboneDistillation) -> None:
    problems = []
    if s.steps < 1 or s.batch_size < 2 or s.prototypes < 2 or s.local_crops < 0:
        problems.append("steps >= 1, batch_size >= 2 (KoLeo and the centring compare images), prototypes >= 2, "
                        "local_crops >= 0")
    if not s.learning_rate > 0 or s.minutes < 0 or s.max_frames < 0:
        problems.append("learning rate > 0, minutes and max_frames >= 0")
    if not 0 <= s.teacher_momentum < 1 or not (s.teacher_temperature_start > 0 and s.teacher_temperature > 0):
        problems.append("teacher momentum in [0, 1), teacher temperatures > 0")
    if not 0 <= s.hue_jitter <= 0.5 or not 0 <= s.greyscale_probability <= 1:
        problems.append("hue_jitter in [0, 0.5] (a turn), greyscale_probability in [0, 1]")
    if s.views not in BACKBONE_VIEWS:
        problems.append(f"views must be one of {BACKBONE_VIEWS}, got {s.views!r}")
    if s.views == "objects" and s.ibot_weight > 0:
        # the student's crops are mirrored half the time and the teacher's never: a patch is not the teacher's
        # patch at the same place
        problems.append("iBOT (ibot_weight > 0) needs the teacher's and the student's patches at the same place; "
                        "object views mirror the student's crops only: set it to 0")
    if s.min_object_pixels < 1:
        problems.append("min_object_pixels >= 1")
    if s.centering not in ("sinkhorn", "centre"):
        problems.append(f"centering must be sinkhorn or centre, got {s.centering!r}")
    for name in ("region_scale", "global_scale", "local_scale", "mask_ratio"):
        low, high = getattr(s, name)
        if not 0 < low <= high <= 1:
            problems.append(f"{name} must be 0 < low <= high <= 1, got {(low, high)}")
    if problems:
        raise ValueError("; ".join(problems))


def _save(out: Path, net: Distillation, processor, optimizer, step: int, settings: BackboneDistillation,
          history: list[dict], model_source: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    net.teacher.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items() if not k.startswith("teacher.")}
    tmp = out / (DISTILLATION_FILE + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(out / DISTILLATION_FILE)
    save_training_state(out, optimizer, step)
    write_training_record(out, TRAINING_FILE, asdict(settings), step, history, model_source)
