"""Mask + aligned depth -> a 3D object: back-projected points, outliers removed, and a box around them.

Two boxes, because one RGB-D view sees only the camera-facing surface of an object:
- `localise` boxes the visible points along their principal directions, in the camera frame. For a
  cylinder that is a box around the visible half-shell, so its centre sits off the axis, toward the
  camera.
- `gravity_aligned_box` / `align_to_gravity` box the points with one axis vertical. A camera above a
  table-top object sees its top face (a cup's rim, a box's lid), whose horizontal projection covers the
  whole footprint, and the front wall down to the table: this box's centre is the object's centre.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import open3d as o3d
from numpy.typing import ArrayLike

from dino_vla.geometry.depth import DepthFrame
from dino_vla.types import Object3D


class NoPointsError(ValueError):
    """Too few usable depth points inside an object's mask to localise it."""


@dataclass(frozen=True)
class LocaliserSettings:
    depth_min_m: float = 0.1           # nearer than this is sensor noise (below any RGB-D camera's range)
    depth_max_m: float = 3.0
    voxel_size_m: float = 0.0          # 0: keep every point
    outlier_neighbours: int = 20       # statistical outlier removal: neighbours per point ...
    outlier_std_ratio: float = 2.0     # ... and how many standard deviations of mean distance are kept
    min_points: int = 30
    # > 0: only the largest cluster of points (DBSCAN, neighbours within this distance) is the object. A mask
    # that bleeds past the object's outline takes in surfaces behind it (with an oblique camera, the table
    # several centimetres further back), which outlier removal keeps when they are many and dense.
    cluster_eps_m: float = 0.0

    def __post_init__(self):
        if not (np.isfinite(self.depth_min_m) and np.isfinite(self.depth_max_m)
                and 0 <= self.depth_min_m < self.depth_max_m):
            raise ValueError(f"need 0 <= depth_min_m < depth_max_m, got {self.depth_min_m}, {self.depth_max_m}")
        if not self.voxel_size_m >= 0:
            raise ValueError(f"voxel_size_m must be >= 0 (0 = no downsampling), got {self.voxel_size_m}")
        if self.outlier_neighbours < 1 or not self.outlier_std_ratio > 0:
            raise ValueError(f"need outlier_neighbours >= 1 and outlier_std_ratio > 0, got "
                             f"{self.outlier_neighbours}, {self.outlier_std_ratio}")
        if not self.cluster_eps_m >= 0:
            raise ValueError(f"cluster_eps_m must be >= 0 (0 = every point), got {self.cluster_eps_m}")
        if self.min_points < 1:
            raise ValueError(f"min_points must be >= 1, got {self.min_points}")


def localise(depth: DepthFrame, mask: np.ndarray, phrase: str, score: float,
             settings: LocaliserSettings = LocaliserSettings()) -> Object3D:
    """The object under `mask`, in depth.frame (the depth image's optical frame: x right, y down, z forward).
    Its box is `principal_box` of the visible points; see the module docstring for the object's centre."""
    metres, intrinsics = depth.metres, depth.intrinsics
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must be bool, got {mask.dtype}")
    if mask.shape != metres.shape:
        raise ValueError(f"mask {mask.shape} must match the depth's (height, width) {metres.shape}")
    in_mask = int(mask.sum())
    if in_mask == 0:
        raise NoPointsError(f"no valid depth inside the mask of {phrase!r} (mask 0 px)")
    # NaN compares False, so missing readings fall out here too
    valid = mask & (metres >= settings.depth_min_m) & (metres <= settings.depth_max_m)
    rows, cols = np.nonzero(valid)
    z = metres[rows, cols].astype(np.float64)
    points = np.stack([(cols - intrinsics.cx) / intrinsics.fx * z, (rows - intrinsics.cy) / intrinsics.fy * z, z],
                      axis=1)
    depth_range = f"depth in [{settings.depth_min_m}, {settings.depth_max_m}] m"
    if len(points) == 0:
        raise NoPointsError(f"no valid depth inside the mask of {phrase!r}: {in_mask} px in mask, 0 with {depth_range}")
    kept = _remove_outliers(points, settings)
    if len(kept) < settings.min_points:
        raise NoPointsError(f"too few points for {phrase!r}: {in_mask} px in mask, {len(points)} with {depth_range}, "
                            f"{len(kept)} after downsampling and outlier removal; need {settings.min_points}")
    centre, rotation, extent = principal_box(kept)
    return Object3D(phrase, float(score), depth.frame, kept.astype(np.float32), centre, rotation, extent)


def _remove_outliers(points: np.ndarray, settings: LocaliserSettings) -> np.ndarray:
    """Mask edges bleed onto the background and depth has flying pixels: drop points whose mean distance to
    their neighbours is far above the cloud's typical one; with cluster_eps_m, keep the largest cluster."""
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    if settings.voxel_size_m > 0:
        cloud = cloud.voxel_down_sample(settings.voxel_size_m)
    cloud, _ = cloud.remove_statistical_outlier(settings.outlier_neighbours, settings.outlier_std_ratio)
    points = np.asarray(cloud.points)
    if settings.cluster_eps_m > 0 and len(points) > 0:
        # clustered on a grid a quarter of eps fine, so that the cost follows the object's size, not the
        # camera's resolution; every point goes with its cell
        cells, member_of = np.unique(np.floor(points / (settings.cluster_eps_m / 4)).astype(np.int64), axis=0,
                                     return_inverse=True)
        grid = o3d.geometry.PointCloud(o3d.utility.Vector3dVector((cells + 0.5) * (settings.cluster_eps_m / 4)))
        labels = np.asarray(grid.cluster_dbscan(settings.cluster_eps_m, min_points=3))[member_of.ravel()]
        if (labels >= 0).any():
            return points[labels == np.bincount(labels[labels >= 0]).argmax()]
    return points


def principal_box(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, rotation, extent) of the box around `points` along their principal directions.

    Columns of `rotation` are sorted by box size, longest first; columns 0 and 1 point so their largest
    component is positive and column 2 = column 0 x column 1, so the result is right-handed and the same
    for the same points."""
    points = np.asarray(points, np.float64)
    mean = points.mean(axis=0)
    centred = points - mean
    _, axes = np.linalg.eigh(centred.T @ centred)
    low, high = _span(centred, axes)
    order = np.argsort(-(high - low), kind="stable")
    axes = axes[:, order]
    for i in (0, 1):
        if axes[np.argmax(np.abs(axes[:, i])), i] < 0:
            axes[:, i] = -axes[:, i]
    axes[:, 2] = np.cross(axes[:, 0], axes[:, 1])
    low, high = _span(centred, axes)
    return mean + axes @ ((low + high) / 2), axes, high - low


def gravity_aligned_box(points: np.ndarray,
                        up: ArrayLike = (0.0, 0.0, 1.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, rotation, extent) of the box with one axis along `up` whose horizontal section is the
    minimum-area rectangle around the points' projection (the footprint a top-down grasp closes on).

    Columns of `rotation`: 0 = the footprint's long side, 1 = up x column 0 (the short side), 2 = up;
    extent = (length, width, height). With up = +z, column 0 is (cos yaw, sin yaw, 0) with yaw in
    (-pi/2, pi/2], so column 1 is Grasp's closing direction (-sin yaw, cos yaw, 0) for that yaw."""
    points = np.asarray(points, np.float64).reshape(-1, 3)
    if len(points) == 0:
        raise ValueError("gravity_aligned_box needs at least one point")
    up = np.asarray(up, np.float64)
    up = up / np.linalg.norm(up)
    reference = np.eye(3)[0] if abs(up[0]) < 0.9 else np.eye(3)[1]
    east = reference - (reference @ up) * up
    east /= np.linalg.norm(east)
    north = np.cross(up, east)
    flat = np.stack([points @ east, points @ north], axis=1)
    yaw = _min_area_yaw(flat)
    sides = _sides(yaw)
    low, high = _span(flat, sides)
    if high[1] - low[1] > high[0] - low[0]:   # make side 0 the long one, keeping yaw in (-pi/2, pi/2]
        yaw = yaw + np.pi / 2 if yaw <= 0 else yaw - np.pi / 2
        sides = _sides(yaw)
        low, high = _span(flat, sides)
    middle = (low + high) / 2
    heights = points @ up
    long_axis = sides[0, 0] * east + sides[1, 0] * north
    rotation = np.stack([long_axis, np.cross(up, long_axis), up], axis=1)
    centre = (sides @ middle) @ np.stack([east, north]) + up * (heights.min() + heights.max()) / 2
    extent = np.array([high[0] - low[0], high[1] - low[1], heights.max() - heights.min()])
    return centre, rotation, extent


def align_to_gravity(obj: Object3D, up: ArrayLike = (0.0, 0.0, 1.0)) -> Object3D:
    """`obj` re-boxed by `gravity_aligned_box`, `up` given in obj.frame (+z in a z-up base frame). For an
    object standing on a table and seen from above, the returned centroid is the object's own centre,
    not that of its visible surface."""
    centre, rotation, extent = gravity_aligned_box(obj.points, up)
    return Object3D(obj.phrase, obj.score, obj.frame, obj.points, centre, rotation, extent)


def _span(points: np.ndarray, axes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    projected = points @ axes
    return projected.min(axis=0), projected.max(axis=0)


def _sides(yaw: float) -> np.ndarray:
    """Columns: the 2D unit vector at `yaw` and the one 90 degrees anticlockwise from it."""
    cos, sin = np.cos(yaw), np.sin(yaw)
    return np.array([[cos, -sin], [sin, cos]])


def _min_area_yaw(flat: np.ndarray) -> float:
    """Angle in (-pi/2, pi/2] of one side of the minimum-area rectangle around 2D points: that rectangle
    has a side along an edge of their convex hull (rotating calipers), so try each edge's direction."""
    centred = flat - flat.mean(axis=0)
    hull = centred[cv2.convexHull(centred.astype(np.float32), returnPoints=False).reshape(-1)]
    edges = np.roll(hull, -1, axis=0) - hull
    angles = np.mod(np.arctan2(edges[:, 1], edges[:, 0]), np.pi / 2)   # a rectangle repeats every 90 degrees
    cos, sin = np.cos(angles), np.sin(angles)
    along = hull @ np.stack([cos, sin])           # (hull points, angles)
    across = hull @ np.stack([-sin, cos])
    areas = np.ptp(along, axis=0) * np.ptp(across, axis=0)
    return float(angles[np.argmin(areas)])
