"""Debug drawing: boxes, phrases, scores and mask overlays on the source image."""
from __future__ import annotations

import cv2
import numpy as np

from dino_vla.types import Detections, Features, Masks

_PALETTE = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                     (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)],
                    np.uint8)


def annotate(image: np.ndarray, detections: Detections, masks: Masks | None = None,
             banner: str | None = None) -> np.ndarray:
    """A new RGB image; ``banner`` (e.g. a warning that the weights are random) is written on top."""
    out = image.copy()
    if masks is not None and len(masks):
        for i, mask in enumerate(masks.masks):
            colour = _PALETTE[i % len(_PALETTE)]
            out[mask] = (0.5 * out[mask] + 0.5 * colour).astype(np.uint8)
    scale = max(0.4, min(out.shape[:2]) / 800)
    for i, (box, phrase, score) in enumerate(zip(detections.boxes, detections.phrases, detections.scores)):
        colour = tuple(int(c) for c in _PALETTE[i % len(_PALETTE)])
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, max(1, int(2 * scale)))
        label = f"{phrase} {score:.2f}"
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = max(y0, th + 4)
        cv2.rectangle(out, (x0, ty - th - 4), (x0 + tw + 4, ty), colour, -1)
        cv2.putText(out, label, (x0 + 2, ty - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    if banner:
        (tw, th), _ = cv2.getTextSize(banner, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.rectangle(out, (0, 0), (out.shape[1], th + 10), (0, 0, 0), -1)
        cv2.putText(out, banner, (5, th + 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 80, 80), 1, cv2.LINE_AA)
    return out


def features_to_rgb(features: Features, size: tuple[int, int]) -> np.ndarray:
    """The first three principal components of the patch tokens as colours, at ``size`` (h, w): the usual
    way to look at DINOv2 features."""
    rows, cols, dim = features.patch_tokens.shape
    tokens = features.patch_tokens.reshape(-1, dim)
    tokens = tokens - tokens.mean(0)
    _, _, vt = np.linalg.svd(tokens, full_matrices=False)
    proj = tokens @ vt[:3].T
    lo, hi = proj.min(0), proj.max(0)
    rgb = ((proj - lo) / np.where(hi > lo, hi - lo, 1) * 255).astype(np.uint8).reshape(rows, cols, -1)
    if rgb.shape[2] < 3:
        rgb = np.repeat(rgb[..., :1], 3, axis=2)
    return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
