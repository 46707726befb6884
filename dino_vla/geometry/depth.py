"""Depth as localisation takes it: one rule for which readings are invalid, applied once per frame."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dino_vla.types import CameraIntrinsics, RigidTransform


def depth_to_metres(depth: np.ndarray) -> np.ndarray:
    """(H, W) depth as 16UC1 millimetres (uint16) or 32FC1 metres (float32) -> float32 metres, with NaN
    where the sensor has no reading (0, NaN or inf)."""
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    if depth.dtype == np.uint16:
        metres = depth.astype(np.float32) / 1000.0
    elif depth.dtype == np.float32:
        metres = depth.copy()
    else:
        raise ValueError(f"depth must be uint16 millimetres (16UC1) or float32 metres (32FC1), got {depth.dtype}")
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres


@dataclass(frozen=True)
class DepthFrame:
    """Depth aligned to the image the masks were computed on, with that image's intrinsics.

    Built from 16UC1 millimetres or 32FC1 metres; holds float32 metres with NaN where there is no reading,
    converted once here so that every mask localised in the frame shares one conversion."""

    metres: np.ndarray         # (H, W) float32 metres, NaN = no reading
    intrinsics: CameraIntrinsics
    frame: str                 # the camera's optical frame

    def __post_init__(self):
        if not self.frame:
            raise ValueError("depth has an empty frame_id: which camera it comes from, hence where it is, is unknown")
        metres = depth_to_metres(self.metres)
        if metres.shape != (self.intrinsics.height, self.intrinsics.width):
            raise ValueError(f"depth is {metres.shape[1]}x{metres.shape[0]}, the intrinsics say "
                             f"{self.intrinsics.width}x{self.intrinsics.height}: depth must be aligned to the "
                             f"colour image")
        object.__setattr__(self, "metres", metres)


def points_in(depth: DepthFrame, camera_to_target: RigidTransform) -> tuple[np.ndarray, np.ndarray]:
    """((H, W, 3) float64 point of every pixel in camera_to_target.parent, (H, W) bool: has a reading). Pixels
    without a reading get the camera's origin (depth 0): mask them with the second array."""
    if camera_to_target.child != depth.frame:
        raise ValueError(f"camera pose is for {camera_to_target.child!r}, depth is in {depth.frame!r}")
    h, w = depth.metres.shape
    k = depth.intrinsics
    valid = np.isfinite(depth.metres)
    z = np.where(valid, depth.metres, 0.0)
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    camera = np.stack([(u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z], -1)
    return camera @ camera_to_target.rotation.T + camera_to_target.translation, valid
