"""Top-down parallel-gripper grasps from an object's points: the geometric baseline a learned policy has to
beat.

The grasp closes across the narrow side of the object's gravity-aligned footprint (`gravity_aligned_box`
of its points, recomputed here whatever box the Object3D carries). The points come from one RGB-D view,
but a camera above a table-top object sees its top face, which covers the whole footprint, so the
footprint's centre is the object's axis, not the visible surface's centre; no camera position is needed.
An object whose top the camera cannot see (camera below it) gets a footprint shifted toward the camera.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dino_vla.geometry.localise import gravity_aligned_box
from dino_vla.types import Grasp, Object3D

DOWN = np.array([0.0, 0.0, -1.0])
REFUSAL_REASONS = ("too_wide", "outside_workspace", "too_few_points", "wrong_frame", "too_small")


class GraspRefused(ValueError):
    """No grasp for this object; `reason` is one of REFUSAL_REASONS, the message gives the numbers."""

    def __init__(self, reason: str, message: str):
        if reason not in REFUSAL_REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}; known: {', '.join(REFUSAL_REASONS)}")
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class GripperSpec:
    max_width_m: float = 0.12      # widest opening between the finger pads
    min_width_m: float = 0.0       # narrowest object the closed fingers still pinch
    finger_length_m: float = 0.05  # the TCP sits between the fingertips; it may go this far below the object's top
    clearance_m: float = 0.01      # opened this much wider than the object, for localisation error

    def __post_init__(self):
        if not 0 <= self.min_width_m < self.max_width_m:
            raise ValueError(f"need 0 <= min_width_m < max_width_m, got {self.min_width_m}, {self.max_width_m}")
        if not self.finger_length_m > 0 or not self.clearance_m >= 0:
            raise ValueError(f"need finger_length_m > 0 and clearance_m >= 0, got {self.finger_length_m}, "
                             f"{self.clearance_m}")


@dataclass(frozen=True)
class Workspace:
    """Where object centres may be (an axis-aligned box in `frame`, z up) and the table the fingers must
    stay `table_margin_m` above."""

    frame: str = "base_link"
    min_xyz: tuple[float, float, float] = (-0.45, -0.35, 0.35)
    max_xyz: tuple[float, float, float] = (0.45, 0.35, 0.9)
    table_height_m: float = 0.40
    table_margin_m: float = 0.005

    def __post_init__(self):
        low, high = np.asarray(self.min_xyz, np.float64), np.asarray(self.max_xyz, np.float64)
        if low.shape != (3,) or high.shape != (3,) or not np.all(np.isfinite(low) & np.isfinite(high) & (low < high)):
            raise ValueError(f"workspace needs three finite min_xyz < max_xyz, got {self.min_xyz}, {self.max_xyz}")
        if not np.isfinite(self.table_height_m) or not self.table_margin_m >= 0:
            raise ValueError(f"need a finite table_height_m and table_margin_m >= 0, got {self.table_height_m}, "
                             f"{self.table_margin_m}")

    @property
    def finger_floor_m(self) -> float:
        return self.table_height_m + self.table_margin_m

    def outside(self, point: np.ndarray) -> list[str]:
        """What puts `point` (in `frame`) outside the box, one entry per axis; empty when inside."""
        return [f"{axis} {c:.3f} not in [{lo}, {hi}]"
                for axis, c, lo, hi in zip("xyz", point, self.min_xyz, self.max_xyz) if not lo <= c <= hi]


# footprints with long side <= this x narrow side are treated as round
ROUND_RATIO = 1.4


class GraspPlanner:
    def __init__(self, gripper: GripperSpec = GripperSpec(), workspace: Workspace = Workspace(), min_points: int = 30):
        if min_points < 1:
            raise ValueError(f"min_points must be >= 1, got {min_points}")
        self.gripper = gripper
        self.workspace = workspace
        self.min_points = min_points

    def plan(self, obj: Object3D) -> Grasp:
        """A top-down grasp (approach -z) of `obj`, which must be in the workspace frame; GraspRefused if none.

        Fingers close across the footprint's narrow side, opened to its width + clearance; the TCP goes to
        the footprint's centre, min(0.8 finger length, half the object's height above the table) below its
        top, never below the finger floor. The footprint bounds every point, so depth noise widens the
        opening rather than narrowing it.

        Score = (1 - width / max_width) * n / (n + min_points) for n points: more opening to spare and
        more points both raise it, and it stays in [0, 1)."""
        gripper, workspace = self.gripper, self.workspace
        name = repr(obj.phrase)
        if obj.frame != workspace.frame:
            raise GraspRefused("wrong_frame", f"{name} is in {obj.frame!r}, the planner works in "
                                              f"{workspace.frame!r}: transform it first")
        n = len(obj.points)
        if n < self.min_points:
            raise GraspRefused("too_few_points", f"{name} has {n} points, the planner needs {self.min_points}")
        points = np.asarray(obj.points, np.float64)
        outside = workspace.outside(gravity_aligned_box(points)[0])
        if outside:
            raise GraspRefused("outside_workspace", f"{name} centre is outside the workspace: {', '.join(outside)}")
        # points this close to the table are the table itself (a mask bleeding past the object's base)
        points = points[points[:, 2] > workspace.finger_floor_m]
        if len(points) == 0:
            raise GraspRefused("too_small", f"{name} rises no higher than {workspace.finger_floor_m:.3f} m, "
                                            f"where the fingers must stop above the table")
        centre, rotation, (long, narrow, height) = gravity_aligned_box(points)
        top = centre[2] + height / 2
        across_long = long <= ROUND_RATIO * narrow and long + gripper.clearance_m <= gripper.max_width_m
        if across_long:
            # A round footprint seen from one side (a ball, a can's body) is short along the line of sight
            # and true across it: close across the true side so neither finger lands on the hidden half.
            narrow, rotation = long, rotation[:, [1, 0, 2]] * [1.0, -1.0, 1.0]
        width = narrow + gripper.clearance_m
        if width > gripper.max_width_m:
            raise GraspRefused("too_wide", f"{name} is {narrow:.3f} m across at its narrowest "
                                           f"(+{gripper.clearance_m:.3f} m clearance), gripper opens "
                                           f"{gripper.max_width_m:.3f} m")
        if narrow < gripper.min_width_m:
            raise GraspRefused("too_small", f"{name} is {narrow:.3f} m across at its narrowest, gripper closes to "
                                            f"{gripper.min_width_m:.3f} m")
        # the object stands on the table: its height counts from there, whatever of its base the camera saw
        depth = min(0.8 * gripper.finger_length_m, (top - workspace.table_height_m) / 2)
        position = np.array([centre[0], centre[1], max(top - depth, workspace.finger_floor_m)])
        # column 0 of the footprint box is (cos yaw, sin yaw, 0), column 1 the closing direction
        yaw = float(np.arctan2(rotation[1, 0], rotation[0, 0]))
        score = (1 - width / gripper.max_width_m) * n / (n + self.min_points)
        return Grasp(position, DOWN.copy(), yaw, float(width), float(score), obj.phrase, workspace.frame)
