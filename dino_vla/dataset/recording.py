"""Demonstrations from what a robot did, ROS-free: which of a frame's objects a commanded grasp was for, so
that recorded episodes carry the target the policy learns to point at (Episode.target_object; training
drops episodes without one)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dino_vla.geometry.localise import NoPointsError, gravity_aligned_box
from dino_vla.types import Grasp, Object3D


def grasped_object(objects: Sequence[Object3D | NoPointsError], grasp: Grasp, margin_m: float = 0.01) -> int | None:
    """Index of the object whose footprint (the gravity-aligned box of its points, z up, as the planner
    sees it) holds the grasp's TCP in the horizontal plane, widened by margin_m on every side; of several,
    the one whose footprint centre is nearest; None when none does. Objects without points (NoPointsError,
    as localise_detections gives them) are never chosen."""
    best: tuple[float, int] | None = None
    for index, obj in enumerate(objects):
        if isinstance(obj, NoPointsError):
            continue
        if obj.frame != grasp.frame:
            raise ValueError(f"object {index} is in {obj.frame!r}, the grasp in {grasp.frame!r}")
        centre, rotation, extent = gravity_aligned_box(obj.points)
        offset = rotation[:2, :2].T @ (np.asarray(grasp.position[:2], np.float64) - centre[:2])
        if np.all(np.abs(offset) <= extent[:2] / 2 + margin_m):
            distance = float(np.hypot(*offset))
            if best is None or distance < best[0]:
                best = (distance, index)
    return None if best is None else best[1]
