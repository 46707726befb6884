"""Typed data passed between the stages. Arrays are numpy; images are (H, W, 3) uint8 RGB."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")   # image files read from folders


@dataclass(frozen=True)
class Features:
    """DINOv2 vision tokens of one image."""

    cls: np.ndarray            # (D,) float32 global embedding
    patch_tokens: np.ndarray   # (rows, cols, D) float32, row-major patch grid
    patch_size: int
    input_size: tuple[int, int]  # (height, width) of the model input after preprocessing
    model: str

    @property
    def grid(self) -> tuple[int, int]:
        return self.patch_tokens.shape[0], self.patch_tokens.shape[1]

    @property
    def dim(self) -> int:
        return int(self.cls.shape[0])


@dataclass(frozen=True)
class Detections:
    """Boxes of the objects an instruction names, in pixels of the source image."""

    boxes: np.ndarray          # (N, 4) float32 xyxy
    scores: np.ndarray         # (N,) float32 in [0, 1], descending
    phrases: tuple[str, ...]   # (N,) the requested phrase each box grounds
    image_size: tuple[int, int]  # (height, width)

    def __post_init__(self):
        n = len(self.phrases)
        if self.boxes.shape != (n, 4) or self.scores.shape != (n,):
            raise ValueError(f"inconsistent detections: boxes {self.boxes.shape}, scores "
                             f"{self.scores.shape}, {n} phrases")
        # boxes come from the wire too: NaN or inf would reach the models and the drawing code
        bad = ~np.isfinite(self.boxes).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"non-finite box coordinates in detection {i} ({self.phrases[i]!r}): "
                             f"{self.boxes[i].tolist()}")

    def __len__(self) -> int:
        return len(self.phrases)

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), (), image_size)


def tight_box(mask: np.ndarray) -> np.ndarray:
    """The xyxy pixel box (x1, y1 exclusive) around a non-empty boolean mask, float32."""
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)


@dataclass(frozen=True)
class Masks:
    """Instance masks aligned with a Detections object (mask i belongs to detection i)."""

    masks: np.ndarray          # (N, H, W) bool, original image size
    scores: np.ndarray         # (N,) float32 predicted IoU
    colours: tuple[str, ...] = ()   # colour name of each mask's pixels ("" unknown); () when not measured

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def label_image(self, detection_scores: np.ndarray | None = None) -> np.ndarray:
        """One label image: 0 background, k >= 1 mask k-1; overlaps go to the higher-scoring detection."""
        n, h, w = self.masks.shape
        dtype = np.uint8 if n < 256 else np.uint16
        if n == 0:
            return np.zeros((h, w), dtype)
        order = np.arange(n) if detection_scores is None else np.argsort(detection_scores, kind="stable")
        # the best detection wins an overlap: rank 1 (lowest score) .. n (highest); later masks win ties, as
        # when painting in order. One max over the stack instead of n boolean writes: the segmenter node
        # spent a quarter of its time here with 20 full-frame masks.
        rank = np.empty(n, dtype)
        rank[order] = np.arange(1, n + 1, dtype=dtype)
        best = (self.masks * rank[:, None, None]).max(axis=0)
        label_of_rank = np.zeros(n + 1, dtype)
        label_of_rank[rank] = np.arange(1, n + 1, dtype=dtype)
        return label_of_rank[best]


DETECTED, TRACKED = "detected", "tracked"   # Provenance.kind


@dataclass(frozen=True)
class Provenance:
    """Where one frame's detections (and masks) come from: the detector on this frame, or carried over from the
    last detection by tracking (pipeline/tracking.py). Times are in nanoseconds of one clock: header stamps in
    the nodes, the monotonic clock elsewhere."""

    kind: str                      # DETECTED or TRACKED
    frames_since_detection: int    # 0 when detected
    detection_stamp_ns: int        # time of the frame the detector last ran on (= stamp_ns when detected)
    stamp_ns: int                  # time of this frame
    confidence: float = 1.0        # tracking confidence of the least sure object; 1 when detected

    def __post_init__(self):
        if self.kind not in (DETECTED, TRACKED):
            raise ValueError(f"provenance must be {DETECTED!r} or {TRACKED!r}, got {self.kind!r}")

    @property
    def detection_age_s(self) -> float:
        return (self.stamp_ns - self.detection_stamp_ns) / 1e9


@dataclass(frozen=True)
class LanguageTokens:
    """Token embeddings of an instruction ("language tokens") and its pooled sentence vector."""

    text: str
    tokens: np.ndarray         # (T, D) float32, special tokens included
    pooled: np.ndarray         # (D,) float32, mean-pooled and L2-normalised
    token_strings: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of the image the depth is aligned to (sensor_msgs/CameraInfo K, no distortion:
    aligned depth from RGB-D drivers is already rectified)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self):
        # a CameraInfo from an uncalibrated driver has K all zero; NaN slips past a plain `fx <= 0`
        if not all(math.isfinite(v) for v in (self.fx, self.fy, self.cx, self.cy)) or self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"no usable intrinsics: fx={self.fx}, fy={self.fy}, cx={self.cx}, cy={self.cy} (an "
                             "uncalibrated camera?)")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"no usable intrinsics: image size {self.width}x{self.height}")


@dataclass(frozen=True)
class RigidTransform:
    """Pose of frame `child` in frame `parent`: p_parent = rotation @ p_child + translation."""

    rotation: np.ndarray       # (3, 3) float64, proper rotation
    translation: np.ndarray    # (3,) float64, metres
    parent: str
    child: str

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) or (3,) points in `child` -> the same points in `parent`."""
        return np.asarray(points, np.float64) @ self.rotation.T + self.translation

    def rotate(self, vectors: np.ndarray) -> np.ndarray:
        """Directions (no translation) from `child` to `parent`."""
        return np.asarray(vectors, np.float64) @ self.rotation.T

    def inverse(self) -> "RigidTransform":
        r = self.rotation.T
        return RigidTransform(r, -r @ self.translation, self.child, self.parent)


@dataclass(frozen=True)
class Object3D:
    """One localised object: its points and an oriented box, all in `frame`."""

    phrase: str
    score: float               # the 2D detection's score
    frame: str
    points: np.ndarray         # (N, 3) float32, outliers removed
    centroid: np.ndarray       # (3,) float64, centre of the oriented box
    rotation: np.ndarray       # (3, 3) float64, columns = box axes, column 0 = principal axis
    extent: np.ndarray         # (3,) float64, box size along each axis, metres

    @property
    def principal_axis(self) -> np.ndarray:
        return self.rotation[:, 0]

    def transformed(self, transform: RigidTransform) -> "Object3D":
        """The same object expressed in transform.parent (self.frame must be transform.child)."""
        if transform.child != self.frame:
            raise ValueError(f"transform maps {transform.child!r} -> {transform.parent!r}, "
                             f"object is in {self.frame!r}")
        return Object3D(self.phrase, self.score, transform.parent, transform.apply(self.points).astype(np.float32),
                        transform.apply(self.centroid), transform.rotation @ self.rotation, self.extent.copy())


@dataclass(frozen=True)
class Grasp:
    """A parallel-gripper grasp: where the tool centre point goes, from where, turned how, opened how far."""

    position: np.ndarray       # (3,) float64 TCP position at the grasp, in `frame`
    approach: np.ndarray       # (3,) float64 unit vector the gripper travels along to reach position
    yaw: float                 # radians about `frame`'s z axis; the fingers close along (-sin yaw, cos yaw, 0)
    width: float               # finger opening before closing, metres
    score: float               # in [0, 1]
    phrase: str                # the object it grasps
    frame: str

    def check(self) -> None:
        """ValueError naming what makes this grasp impossible to execute (grasps arrive from the wire too)."""
        numbers = np.array([*np.ravel(self.position), *np.ravel(self.approach), self.yaw, self.width], np.float64)
        if np.shape(self.position) != (3,) or np.shape(self.approach) != (3,) or not np.isfinite(numbers).all():
            raise ValueError(f"grasp needs finite numbers: position {np.ravel(self.position).tolist()}, approach "
                             f"{np.ravel(self.approach).tolist()}, yaw {self.yaw}, width {self.width}")
        if self.width < 0:
            raise ValueError(f"grasp width {self.width} m is negative")
