"""What the policy sees, as token inputs: vision tokens (the DINOv2 patch grid, pooled to a small grid),
object tokens (one per instance mask: its 3D footprint box in the base frame and its mask-pooled DINOv2
feature) and language tokens (the text encoder's token states). Also the grasp <-> per-object target
encoding: a grasp is stored relative to the chosen object's box (offset, yaw turn, opening).

ROS-free and model-free: the same functions build training batches and run on the robot."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from dino_vla.colour import COLOUR_NAMES
from dino_vla.config import OBJECT_FEATURES, OBJECT_GEOMETRIES
from dino_vla.geometry.depth import DepthFrame
from dino_vla.geometry.localise import LocaliserSettings, NoPointsError, gravity_aligned_box, localise
from dino_vla.language import Instruction
from dino_vla.language.parser import RELATION_TYPES
from dino_vla.models.segmenter import OBJECT_CONTEXT, crop_window
from dino_vla.types import Features, Grasp, RigidTransform, tight_box

# centre xyz, top z, long side, narrow side, height, cos 2yaw, sin 2yaw, log(points), mask centre u, v (0..1),
# then the colour measured under the mask, one-hot over COLOUR_NAMES + unknown
COLOUR_SLOTS = (*COLOUR_NAMES, "")
GEOMETRY_DIM = 12 + len(COLOUR_SLOTS)
# object_geometry "position" keeps only these geometry columns: the footprint's x, y and the mask's centre
POSITION_COLUMNS = (0, 1, 10, 11)
# The request token: the parse's closed-vocabulary words as one-hots (the target's colour, a colour word the
# camera cannot tell apart, or none; its size word or none; the relation or none; whether nearest/farthest is
# measured from the robot), so the network compares a requested colour with each object's measured colour
# the same way for every noun, including colour-noun pairs it never saw together
REQUEST_COLOURS = (*COLOUR_NAMES, "other", "")
REQUEST_SIZES = ("big", "small", "tall", "short", "")
REQUEST_RELATIONS = (*RELATION_TYPES, "")
REQUEST_DIM = len(REQUEST_COLOURS) + len(REQUEST_SIZES) + len(REQUEST_RELATIONS) + 1
# what tokens a checkpoint was trained on: 1 = the whole instruction's text, no colours, no "none" choice;
# 2 = the parsed request's text, measured colours, "none"; 3 = 2 + the request token; 4 = 3 + reference tokens
# (each reference phrase of a relation encoded alone), which a reference pointer grounds to an object
TOKENS_VERSION = 4
REFERENCE_SLOTS = 2     # references a relation names at most ("between the jar and the box")
TARGET_DIM = 5      # dx, dy, dz (m, base frame), dyaw (rad), opening (m)
TABLE_MARGIN_M = 0.005


@dataclass(frozen=True)
class ViewSettings:
    """How observations become tokens; stored in the checkpoint, since a policy only understands the tokens
    it was trained on."""

    # patch tokens are average-pooled to vision_grid x vision_grid: 4 (16 tokens) trains 3x faster than 8 on
    # CPU, and which object is meant is read from the object tokens
    vision_grid: int = 4
    crop_fraction: float = 0.875       # the feature model's centre crop / resize (DINOv2: 224 / 256)
    table_height_m: float = 0.40       # points below table + 5 mm are the table, not the object
    localiser: LocaliserSettings = LocaliserSettings()
    # "crop" runs the backbone once more per object, on the view `pretrain-backbone --views objects` learns
    # from: in the frame's patches a small object is a few patches mixed with what surrounds it
    object_features: str = "mask"
    # "position": depth's measured shape (heights, sizes, yaw, point count) and the colour name are left out,
    # so only the appearance feature tells objects apart (depth that cannot measure shape: glass, shine; and
    # what a backbone adds to a policy is measured this way)
    object_geometry: str = "full"

    def __post_init__(self):
        if self.object_features not in OBJECT_FEATURES:
            raise ValueError(f"object_features must be one of {OBJECT_FEATURES}, got {self.object_features!r}")
        if self.object_geometry not in OBJECT_GEOMETRIES:
            raise ValueError(f"object_geometry must be one of {OBJECT_GEOMETRIES}, got {self.object_geometry!r}")


@dataclass(frozen=True)
class ObjectTokens:
    """Per-instance inputs of one observation. Instances without usable depth are left out (`kept` maps
    rows back to the instance masks they came from)."""

    geometry: np.ndarray      # (N, GEOMETRY_DIM) float32, raw (normalised inside the model)
    pooled: np.ndarray        # (N, D) float32 mask-pooled patch features (zeros where the crop misses it), or
                              # with object_features "crop" the class token of each object's crop
    coverage: np.ndarray      # (N,) float32 fraction of a patch the mask covers, summed over the grid
    anchors: np.ndarray       # (N, 4) float64 box centre xyz + footprint long-side yaw, base frame
    patch_weights: np.ndarray  # (N, rows, cols) float32 what `pooled` averaged with (for fine-tuning)
    kept: tuple[int, ...]     # instance index of each row
    skipped: dict[int, str]   # instance index -> why it has no token

    def __len__(self) -> int:
        return len(self.kept)


def vision_tokens(features: Features, grid: int) -> np.ndarray:
    """(grid * grid, D) float32: the patch grid average-pooled (area-weighted) to grid x grid."""
    patches = np.asarray(features.patch_tokens, np.float32)
    rows, cols, dim = patches.shape
    pooled = cv2.resize(patches.reshape(rows, cols, dim), (grid, grid), interpolation=cv2.INTER_AREA)
    return pooled.reshape(grid * grid, dim)


def patch_weights(mask: np.ndarray, features: Features, crop_fraction: float) -> np.ndarray:
    """(rows, cols) fraction of each patch that `mask` (original image size) covers, following the feature
    model's preprocessing: resize so the short side is input/crop_fraction, then a centre crop."""
    h, w = mask.shape
    in_h, in_w = features.input_size
    scale = (min(in_h, in_w) / crop_fraction) / min(h, w)      # resized pixels per original pixel
    view_h, view_w = in_h / scale, in_w / scale
    top, left = int(round((h - view_h) / 2)), int(round((w - view_w) / 2))
    crop = mask[max(top, 0):max(top, 0) + int(round(view_h)), max(left, 0):max(left, 0) + int(round(view_w))]
    rows, cols = features.patch_tokens.shape[:2]
    if crop.size == 0:
        return np.zeros((rows, cols), np.float32)
    return cv2.resize(crop.astype(np.float32), (cols, rows), interpolation=cv2.INTER_AREA)


_RELATION_WORDS = {"left_of": "left of", "right_of": "right of", "in_front_of": "in front of", "behind": "behind",
                   "near": "next to", "between": "between", "nearest": "nearest to the",
                   "farthest": "farthest from the",
                   "leftmost": "on the far left", "rightmost": "on the far right"}


def language_text(instruction: Instruction) -> str:
    """What the text encoder reads: the parsed request in one canonical wording ("red mug, left of, box"), so
    the network learns objects and relations, not the thousand ways of asking (the parser's job)."""
    parts = [instruction.target.phrase]
    relation = instruction.relation
    if relation is not None:
        parts.append(_RELATION_WORDS[relation.type] + (f" {relation.anchor}" if relation.anchor else ""))
        if relation.references:
            parts.append(" and ".join(r.phrase for r in relation.references))
    return ", ".join(parts)


def request_vector(instruction: Instruction) -> np.ndarray:
    """(REQUEST_DIM,) float32: the request token's one-hots (see REQUEST_COLOURS)."""
    target, relation = instruction.target, instruction.relation
    colour = "" if target.colour is None else target.colour if target.colour in COLOUR_NAMES else "other"
    out = np.zeros(REQUEST_DIM, np.float32)
    out[REQUEST_COLOURS.index(colour)] = 1.0
    offset = len(REQUEST_COLOURS)
    out[offset + REQUEST_SIZES.index(target.size or "")] = 1.0
    offset += len(REQUEST_SIZES)
    out[offset + REQUEST_RELATIONS.index(relation.type if relation else "")] = 1.0
    out[-1] = float(relation is not None and relation.anchor == "robot")
    return out


def reference_vectors(instruction: Instruction, encode) -> np.ndarray:
    """(R, language_dim) float32: each reference phrase of the instruction's relation (none without one)
    encoded alone by `encode` (text -> (T, language_dim) token states) and averaged over its tokens. Alone,
    so "jar" reads the same whatever relation it is the reference of: grounding the reference is learned
    from every relation and carries over to relation-reference pairs no demonstration names."""
    references = instruction.relation.references if instruction.relation is not None else ()
    vectors = [np.asarray(encode(r.phrase), np.float32).mean(0) for r in references]
    return np.asarray(vectors, np.float32).reshape(len(vectors), -1) if vectors else np.zeros((0, 0), np.float32)


def colour_one_hot(colours: tuple[str, ...], count: int) -> np.ndarray:
    """(count, len(COLOUR_SLOTS)) one-hot of each mask's colour name ("" or not measured: unknown)."""
    out = np.zeros((count, len(COLOUR_SLOTS)), np.float32)
    for i in range(count):
        name = colours[i] if i < len(colours) and colours[i] in COLOUR_NAMES else ""
        out[i, COLOUR_SLOTS.index(name)] = 1.0
    return out


def crop_feature(extract: Callable[[np.ndarray], Features], rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The class token `extract` (DinoFeatures.extract) gives a non-empty mask's crop of the image,
    OBJECT_CONTEXT times its box."""
    x0, y0, x1, y1 = crop_window(tight_box(mask), mask.shape, OBJECT_CONTEXT)
    return np.asarray(extract(np.ascontiguousarray(rgb[y0:y1, x0:x1])).cls, np.float32)


def object_tokens(features: Features, depth: DepthFrame, masks: np.ndarray, camera_to_base: RigidTransform,
                  view: ViewSettings, colours: tuple[str, ...] = (),
                  crop: Callable[[np.ndarray], np.ndarray] | None = None) -> ObjectTokens:
    """One token per instance mask ((N, H, W) bool) that has enough depth points above the table; `colours`
    names each mask's colour (Masks.colours; empty: unknown). `crop`: mask -> its crop_feature, which
    view.object_features "crop" takes in place of the mask-pooled patches (run only for masks that get a
    token)."""
    if camera_to_base.child != depth.frame:
        raise ValueError(f"camera pose is for {camera_to_base.child!r}, depth is in {depth.frame!r}")
    if view.object_features == "crop" and crop is None:
        raise ValueError("object_features 'crop' needs the masks' crop features")
    patches = np.asarray(features.patch_tokens, np.float32)
    h, w = depth.metres.shape
    paint = colour_one_hot(colours, len(masks))
    geometry, pooled, coverage, anchors, all_weights, kept, skipped = [], [], [], [], [], [], {}
    for i, mask in enumerate(masks):
        try:
            obj = localise(depth, mask, "object", 1.0, view.localiser)
        except NoPointsError as err:
            skipped[i] = str(err)
            continue
        points = camera_to_base.apply(obj.points)
        points = points[points[:, 2] > view.table_height_m + TABLE_MARGIN_M]
        if len(points) < view.localiser.min_points:
            skipped[i] = f"{len(points)} points above the table"
            continue
        centre, rotation, (long, narrow, height) = gravity_aligned_box(points)
        yaw = math.atan2(rotation[1, 0], rotation[0, 0])
        rows, cols = np.nonzero(mask)
        geometry.append([*centre, centre[2] + height / 2, long, narrow, height, math.cos(2 * yaw),
                         math.sin(2 * yaw), math.log(len(points)), cols.mean() / w, rows.mean() / h, *paint[i]])
        weights = patch_weights(mask, features, view.crop_fraction)
        total = float(weights.sum())
        if view.object_features == "crop":
            pooled.append(crop(mask))
        else:
            pooled.append(np.tensordot(weights, patches, axes=([0, 1], [0, 1])) / total if total > 1e-6
                          else np.zeros(patches.shape[-1], np.float32))
        coverage.append(total)
        all_weights.append(weights)
        anchors.append([*centre, yaw])
        kept.append(i)
    dim = patches.shape[-1]
    geometry = np.asarray(geometry, np.float32).reshape(-1, GEOMETRY_DIM)
    if view.object_geometry == "position":
        geometry[:, [c for c in range(GEOMETRY_DIM) if c not in POSITION_COLUMNS]] = 0.0
    return ObjectTokens(geometry,
                        np.asarray(pooled, np.float32).reshape(-1, dim), np.asarray(coverage, np.float32),
                        np.asarray(anchors, np.float64).reshape(-1, 4),
                        np.asarray(all_weights, np.float32).reshape(-1, *patches.shape[:2]), tuple(kept), skipped)


def fold_angle(angle: float, symmetry: int) -> float:
    """`angle` reduced to (-pi/symmetry, pi/symmetry]: the same grasp for an object (and parallel gripper)
    that looks the same turned by 2 pi / symmetry. symmetry 0 = round: every turn is the same grasp."""
    if symmetry == 0:
        return 0.0
    period = 2 * math.pi / symmetry
    folded = math.remainder(angle, period)
    return period / 2 if math.isclose(folded, -period / 2) else folded


def grasp_target(grasp_position: np.ndarray, grasp_yaw: float, grasp_width: float, anchor: np.ndarray,
                 symmetry: int = 2) -> np.ndarray:
    """The grasp relative to an object's anchor: (dx, dy, dz, dyaw, opening). A parallel gripper is
    2-fold symmetric; objects may be more (symmetry 4: a square box; 0: round)."""
    turn = fold_angle(grasp_yaw - anchor[3], max(symmetry, 2) if symmetry else 0)
    return np.array([*(np.asarray(grasp_position) - anchor[:3]), turn, grasp_width], np.float32)


def grasp_from_target(target: np.ndarray, anchor: np.ndarray, frame: str, phrase: str, score: float) -> Grasp:
    yaw = math.remainder(float(anchor[3] + target[3]), 2 * math.pi)
    return Grasp(anchor[:3] + np.asarray(target[:3], np.float64), np.array([0.0, 0.0, -1.0]), yaw,
                 float(target[4]), float(score), phrase, frame)
