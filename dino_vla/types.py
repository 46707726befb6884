"""Typed data passed between the stages. Arrays are numpy; images are (H, W, 3) uint8 RGB."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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

    def __len__(self) -> int:
        return len(self.phrases)

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), (), image_size)


@dataclass(frozen=True)
class Masks:
    """Instance masks aligned with a Detections object (mask i belongs to detection i)."""

    masks: np.ndarray          # (N, H, W) bool, original image size
    scores: np.ndarray         # (N,) float32 predicted IoU

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def label_image(self, detection_scores: np.ndarray | None = None) -> np.ndarray:
        """One label image: 0 background, k >= 1 mask k-1; overlaps go to the higher-scoring detection."""
        n, h, w = self.masks.shape
        dtype = np.uint8 if n < 256 else np.uint16
        labels = np.zeros((h, w), dtype)
        order = np.arange(n) if detection_scores is None else np.argsort(detection_scores, kind="stable")
        # paint lowest score first so the best detection ends up on top
        for i in order:
            labels[self.masks[i]] = i + 1
        return labels


@dataclass(frozen=True)
class LanguageTokens:
    """Token embeddings of an instruction ("language tokens") and its pooled sentence vector."""

    text: str
    tokens: np.ndarray         # (T, D) float32, special tokens included
    pooled: np.ndarray         # (D,) float32, mean-pooled and L2-normalised
    token_strings: tuple[str, ...] = field(default=())
