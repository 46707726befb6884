"""The object under a pixel, from depth alone: no mask, no detector.

What stands on a table rises above it, and where one object ends and another (or the table behind it) begins
the depth jumps. So the pixels more than `above_table_m` above the table, cut apart wherever neighbouring
readings differ by more than `depth_edge_m`, fall into connected regions, one per object unless objects touch
at the same depth. The region nearest the pixel (within `reach_px`) is the object; the edge pixels cut away
around it are given back (up to `regrow_px` away, where no other region claims them), so that a curved
object's rim, where its own depth changes fast, still counts for its width (only at depths the region
spans, so a neighbour's rim stays out).

The mask-free policy points at a pixel; this turns that pixel into a mask for the geometric grasp planner."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dino_vla.geometry.depth import DepthFrame, points_in
from dino_vla.geometry.localise import NoPointsError
from dino_vla.types import RigidTransform


@dataclass(frozen=True)
class RegionSettings:
    above_table_m: float = 0.01   # a pixel belongs to an object when it is this much above the table
    # neighbouring readings further apart than this are two surfaces; 1.5 cm is ~10 pixel steps on a surface
    # seen at 70 degrees from 0.8 m, so a steep side stays whole
    depth_edge_m: float = 0.015
    reach_px: int = 12            # the region may start this far from the pixel (a pointer at an object's rim)
    regrow_px: int = 3

    def __post_init__(self):
        if not (self.above_table_m > 0 and self.depth_edge_m > 0 and self.reach_px >= 0 and self.regrow_px >= 0):
            raise ValueError(f"need above_table_m, depth_edge_m > 0 and reach_px, regrow_px >= 0, got {self}")


@dataclass(frozen=True)
class Regions:
    """A depth frame cut into objects (object_regions)."""

    labels: np.ndarray     # (H, W) int32: 0 no object, k > 0 the k-th region
    points: np.ndarray     # (H, W, 3) every pixel's point in camera_to_base.parent (points_in)
    valid: np.ndarray      # (H, W) bool: a pixel with a depth reading (points_in)
    above: np.ndarray      # (H, W) bool: a reading more than above_table_m above the table
    # what they were cut from, so that a caller handed them can tell whether they are the ones it would cut
    depth: DepthFrame
    camera_to_base: RigidTransform
    table_height_m: float
    settings: RegionSettings

    def cut_from(self, depth: DepthFrame, camera_to_base: RigidTransform, table_height_m: float,
                 settings: RegionSettings) -> bool:
        return (self.depth is depth and self.camera_to_base is camera_to_base
                and self.table_height_m == table_height_m and self.settings == settings)


def object_regions(depth: DepthFrame, camera_to_base: RigidTransform, table_height_m: float,
                   settings: RegionSettings = RegionSettings(), cut: Regions | None = None) -> Regions:
    """Every object region of the frame (see the module docstring). camera_to_base: the camera's pose in the
    frame whose z is up and where the table is at table_height_m. `cut`: regions already cut from the same
    frame (one decision's camera channels and grasp share them), taken as they are when they were cut with
    the same inputs."""
    if cut is not None and cut.cut_from(depth, camera_to_base, table_height_m, settings):
        return cut
    points, valid = points_in(depth, camera_to_base)
    above = valid & (points[..., 2] - table_height_m > settings.above_table_m)
    z = np.where(valid, depth.metres, np.inf)
    with np.errstate(invalid="ignore"):   # inf - inf where neither has a reading: not an edge (NaN > x is False)
        across = np.abs(np.diff(z, axis=1)) > settings.depth_edge_m
        down = np.abs(np.diff(z, axis=0)) > settings.depth_edge_m
    edge = np.zeros_like(above)
    edge[:, 1:] |= across
    edge[:, :-1] |= across
    edge[1:] |= down
    edge[:-1] |= down
    _, labels = cv2.connectedComponents((above & ~edge).astype(np.uint8), connectivity=4)
    return Regions(labels, points, valid, above, depth, camera_to_base, table_height_m, settings)


def object_region(depth: DepthFrame, camera_to_base: RigidTransform, table_height_m: float,
                  pixel: tuple[float, float], settings: RegionSettings = RegionSettings(),
                  cut: Regions | None = None) -> np.ndarray:
    """(H, W) bool mask of the object at pixel (u, v); NoPointsError when nothing rises above the table
    within reach_px of it. `cut`: as for object_regions."""
    regions = object_regions(depth, camera_to_base, table_height_m, settings, cut)
    labels = regions.labels
    u, v = pixel
    r, c = int(round(v)), int(round(u))
    r0, c0 = max(r - settings.reach_px, 0), max(c - settings.reach_px, 0)
    near = labels[r0:max(r + settings.reach_px + 1, 0), c0:max(c + settings.reach_px + 1, 0)]
    rows, cols = np.nonzero(near)
    if len(rows) == 0:
        raise NoPointsError(f"nothing rises {settings.above_table_m * 100:g} cm above the table within "
                            f"{settings.reach_px} px of pixel ({u:.0f}, {v:.0f})")
    nearest = int(np.argmin((rows + r0 - r) ** 2 + (cols + c0 - c) ** 2))
    chosen = labels == near[rows[nearest], cols[nearest]]
    if settings.regrow_px == 0:
        return chosen
    side = 2 * settings.regrow_px + 1
    grown = cv2.dilate(chosen.astype(np.uint8), np.ones((side, side), np.uint8)).astype(bool)
    # an edge pixel beside the object may be a neighbour's rim instead: only depths the object spans come back
    own = depth.metres[chosen]
    with np.errstate(invalid="ignore"):
        spanned = (depth.metres >= own.min() - settings.depth_edge_m) \
            & (depth.metres <= own.max() + settings.depth_edge_m)
    return chosen | (grown & regions.above & (labels == 0) & spanned)


def region_shapes(regions: Regions) -> np.ndarray:
    """(H, W, 3) float32: on each pixel of a region, that object's height above the table and the long and
    short sides of its footprint (the smallest rectangle around its points seen from above, m); 0 elsewhere.
    What an RGB-D camera tells of an object's shape without knowing what it is: a bottle is tall and narrow,
    a bowl low and wide."""
    out = np.zeros((*regions.labels.shape, 3), np.float32)
    flat = regions.labels.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(1, int(flat.max(initial=0)) + 2))
    points = regions.points.reshape(-1, 3)
    for k in range(len(bounds) - 1):
        pixels = order[bounds[k]:bounds[k + 1]]
        if len(pixels) < 3:
            continue
        (_, _), (a, b), _ = cv2.minAreaRect(points[pixels, :2].astype(np.float32))
        out.reshape(-1, 3)[pixels] = (points[pixels, 2].max() - regions.table_height_m, max(a, b), min(a, b))
    return out
