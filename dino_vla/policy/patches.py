"""What the mask-free policy sees and answers, per DINOv2 patch: where each patch lies in the camera image (the
feature model's resize + centre crop undone), each patch's camera channels (its mean colour and the 3D point
of its depth in the base frame: an RGB-D sensor's own readings, no masks), the grasp as a patch index plus a
sub-patch offset, and a chosen pixel lifted back to 3D with depth and the camera pose.

ROS-free and model-free: the same functions build training targets and run on the robot."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from dino_vla.geometry.depth import DepthFrame
from dino_vla.geometry.depth_region import Regions, RegionSettings, object_regions, region_shapes
from dino_vla.types import RigidTransform

# per patch: base-frame x, y (m), mean height above the table (m), fraction of pixels more than 1 cm above it,
# fraction with a depth reading, mean R, G, B (0..1), and the shape of the object it shows from depth alone
# (geometry.depth_region.region_shapes: its height above the table, its footprint's long and short sides, m)
CAMERA_DIM = 11
ABOVE_TABLE_M = 0.01
REGIONS = RegionSettings(above_table_m=ABOVE_TABLE_M)   # how the camera channels cut the depth into objects
# the grasp at a patch, relative to it: sub-patch pixel offset (du, dv in patch widths from its centre), the
# grasp point minus the depth point under that pixel (dx, dy, dz, base frame, m), cos 2yaw, sin 2yaw, opening (m)
OFFSET_DIM = 8
SURFACE_WINDOW = 2      # the depth under a pixel: the median over (2 * 2 + 1)^2 pixels around it


@dataclass(frozen=True)
class PatchGrid:
    """The feature model's view of a camera image: `rows` x `cols` patches of `patch_px` input pixels; input
    pixel (x, y) shows camera pixel (left + x / scale, top + y / scale)."""

    rows: int
    cols: int
    patch_px: int
    scale: float          # input pixels per camera pixel
    top: float            # camera pixel row of the input's top edge
    left: float

    @classmethod
    def of(cls, image_shape: tuple[int, int], input_size: tuple[int, int], patch_px: int,
           crop_fraction: float) -> "PatchGrid":
        """The grid of an (H, W) camera image resized so its short side is min(input_size) / crop_fraction,
        then centre-cropped to input_size (the DINOv2 processor)."""
        h, w = image_shape
        in_h, in_w = input_size
        scale = (min(in_h, in_w) / crop_fraction) / min(h, w)
        return cls(in_h // patch_px, in_w // patch_px, patch_px, scale, (h - in_h / scale) / 2,
                   (w - in_w / scale) / 2)

    @property
    def size(self) -> int:
        return self.rows * self.cols

    @property
    def patch_camera_px(self) -> float:
        return self.patch_px / self.scale

    def patch_of(self, u: float, v: float) -> int | None:
        """Row-major index of the patch showing camera pixel (u, v) (None: outside the view)."""
        col = math.floor((u - self.left) / self.patch_camera_px)
        row = math.floor((v - self.top) / self.patch_camera_px)
        return row * self.cols + col if 0 <= row < self.rows and 0 <= col < self.cols else None

    def centre(self, index: int) -> tuple[float, float]:
        """Camera pixel (u, v) of a patch's centre."""
        row, col = divmod(index, self.cols)
        return self.left + (col + 0.5) * self.patch_camera_px, self.top + (row + 0.5) * self.patch_camera_px

    def pixel(self, index: int, offset: tuple[float, float]) -> tuple[float, float]:
        """Camera pixel of a patch's centre moved by `offset` patch widths (du, dv)."""
        u, v = self.centre(index)
        return u + offset[0] * self.patch_camera_px, v + offset[1] * self.patch_camera_px

    def offset_of(self, index: int, u: float, v: float) -> tuple[float, float]:
        cu, cv = self.centre(index)
        return (u - cu) / self.patch_camera_px, (v - cv) / self.patch_camera_px

    def window(self, image: np.ndarray) -> np.ndarray:
        """The part of a camera-sized image the grid shows, resized to (rows, cols) by area averaging (NaN-free
        input expected)."""
        h, w = image.shape[:2]
        top, left = max(int(round(self.top)), 0), max(int(round(self.left)), 0)
        size = self.rows * self.patch_camera_px, self.cols * self.patch_camera_px
        crop = image[top:min(h, top + int(round(size[0]))), left:min(w, left + int(round(size[1])))]
        return cv2.resize(crop.astype(np.float32), (self.cols, self.rows), interpolation=cv2.INTER_AREA)


def project(point: np.ndarray, depth: DepthFrame, camera_to_base: RigidTransform) -> tuple[float, float, float]:
    """A base-frame point -> camera pixel (u, v) and its depth along the optical axis (m)."""
    p = camera_to_base.inverse().apply(np.asarray(point, np.float64))
    k = depth.intrinsics
    return k.fx * p[0] / p[2] + k.cx, k.fy * p[1] / p[2] + k.cy, float(p[2])


def lift(u: float, v: float, z: float, depth: DepthFrame, camera_to_base: RigidTransform) -> np.ndarray:
    """Camera pixel (u, v) at depth z (m along the optical axis) -> the base-frame point."""
    k = depth.intrinsics
    return camera_to_base.apply(np.array([(u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z]))


class NoDepthError(ValueError):
    pass


def surface_point(u: float, v: float, depth: DepthFrame, camera_to_base: RigidTransform) -> np.ndarray:
    """The base-frame point the camera sees at pixel (u, v): lifted with the median depth around it."""
    h, w = depth.metres.shape
    r, c = int(round(v)), int(round(u))
    patch = depth.metres[max(r - SURFACE_WINDOW, 0):max(r + SURFACE_WINDOW + 1, 0),
                         max(c - SURFACE_WINDOW, 0):max(c + SURFACE_WINDOW + 1, 0)]
    valid = patch[np.isfinite(patch)]
    if not (0 <= r < h and 0 <= c < w) or valid.size == 0:
        raise NoDepthError(f"no depth reading around pixel ({u:.0f}, {v:.0f})")
    return lift(u, v, float(np.median(valid)), depth, camera_to_base)


def camera_channels(rgb: np.ndarray, depth: DepthFrame, camera_to_base: RigidTransform, grid: PatchGrid,
                    table_height_m: float, cut: Regions | None = None) -> np.ndarray:
    """(rows * cols, CAMERA_DIM) float32: each patch's camera channels (see CAMERA_DIM). `cut`: the frame's
    object regions where the caller has them (geometry.depth_region.object_regions)."""
    regions = object_regions(depth, camera_to_base, table_height_m, REGIONS, cut)
    points, valid = regions.points, regions.valid
    height = points[..., 2] - table_height_m
    weight = grid.window(valid.astype(np.float32))
    sums = [grid.window(np.where(valid, c, 0.0)) for c in (points[..., 0], points[..., 1], height)]
    means = [s / np.maximum(weight, 1e-6) for s in sums]
    above = grid.window(regions.above.astype(np.float32))
    colour = grid.window(np.asarray(rgb, np.float32) / 255.0)
    # the shape of the object each patch shows, averaged over the patch's pixels that belong to one
    in_region = grid.window((regions.labels > 0).astype(np.float32))[..., None]
    shapes = grid.window(region_shapes(regions)) / np.maximum(in_region, 1e-6)
    return np.concatenate([np.stack([*means, above, weight], -1), colour, shapes], -1) \
        .reshape(grid.size, CAMERA_DIM).astype(np.float32)


def grasp_offsets(grid: PatchGrid, position: np.ndarray, yaw: float, width: float, depth: DepthFrame,
                  camera_to_base: RigidTransform) -> tuple[int, np.ndarray] | None:
    """(the patch showing the grasp point, its OFFSET_DIM targets) of a base-frame grasp; None when the grasp
    point is outside the view or has no depth under it."""
    u, v, _ = project(position, depth, camera_to_base)
    index = grid.patch_of(u, v)
    if index is None:
        return None
    try:
        surface = surface_point(u, v, depth, camera_to_base)
    except NoDepthError:
        return None
    du, dv = grid.offset_of(index, u, v)
    return index, np.array([du, dv, *(np.asarray(position) - surface), math.cos(2 * yaw), math.sin(2 * yaw),
                            width], np.float32)


@dataclass(frozen=True)
class PatchGrasp:
    position: np.ndarray      # base frame
    yaw: float
    width: float
    pixel: tuple[float, float]  # where in the camera image the policy pointed


def grasp_at(grid: PatchGrid, index: int, offsets: np.ndarray, depth: DepthFrame,
             camera_to_base: RigidTransform) -> PatchGrasp:
    """The grasp a patch's OFFSET_DIM outputs describe: its pixel lifted with depth, plus the 3D residual.
    Raises NoDepthError where the pixel has no depth around it."""
    du, dv = np.clip(offsets[:2], -0.5, 0.5)
    u, v = grid.pixel(index, (float(du), float(dv)))
    surface = surface_point(u, v, depth, camera_to_base)
    yaw = 0.5 * math.atan2(float(offsets[6]), float(offsets[5]))
    return PatchGrasp(surface + np.asarray(offsets[2:5], np.float64), yaw, max(float(offsets[7]), 0.0), (u, v))
