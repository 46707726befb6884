"""Bounds on what the policy may command, ROS-free: the TCP stays in the cell's workspace box and above the
table, the gripper opens no wider than it can, and the setpoint stream moves and turns no faster than the
configured speed and yaw rate. Every clamp applied is named, so the node can say what it changed."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dino_vla.config import ConfigError
from dino_vla.geometry.grasp_planner import Workspace
from dino_vla.types import Grasp


def yaw_difference(a: float, b: float) -> float:
    """a - b for a two-finger gripper, whose yaw and yaw + pi are the same grasp: in [-pi/2, pi/2)."""
    return (a - b + math.pi / 2) % math.pi - math.pi / 2


@dataclass(frozen=True)
class CommandLimits:
    workspace: Workspace       # the TCP stays in this box (in workspace.frame) and above the finger floor
    max_opening_m: float       # gripper width is clipped into [0, this]
    max_speed_mps: float       # a setpoint moves at most this * dt from the previous one
    max_yaw_rate_rps: float    # and turns at most this * dt (yaw modulo pi)

    def __post_init__(self):
        for name in ("max_opening_m", "max_speed_mps", "max_yaw_rate_rps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if self.workspace.finger_floor_m >= self.workspace.max_xyz[2]:
            raise ValueError(f"the table (fingers stay above z = {self.workspace.finger_floor_m:.3f} m) is not below "
                             f"the workspace top z = {self.workspace.max_xyz[2]} m")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "CommandLimits":
        """From the policy node's validated parameters (config.NODE_PARAMS["policy"]); values that are valid one
        by one but not together (workspace_min above workspace_max) raise ConfigError."""
        try:
            return cls(Workspace(frame=params["target_frame"], min_xyz=params["workspace_min"],
                                 max_xyz=params["workspace_max"], table_height_m=params["table_height_m"]),
                       params["max_opening_m"], params["max_speed_mps"], params["max_yaw_rate_rps"])
        except ValueError as err:
            raise ConfigError(f"policy limits: {err}") from None

    def clamp(self, grasp: Grasp, previous: Grasp | None, dt_s: float) -> tuple[Grasp, list[str]]:
        """`grasp` moved into the workspace box (and above the table), its width into [0, max_opening_m], and,
        when `previous` (the last published setpoint) is given, its step from it shortened to max_speed_mps *
        dt_s and its turn to max_yaw_rate_rps * dt_s. Returns the grasp and a note per clamp applied.
        A grasp in another frame than the workspace's, or with non-finite numbers, is a ValueError."""
        ws = self.workspace
        if grasp.frame != ws.frame:
            raise ValueError(f"grasp is in {grasp.frame!r}, the limits are in {ws.frame!r}")
        if previous is not None and previous.frame != ws.frame:
            raise ValueError(f"previous setpoint is in {previous.frame!r}, the limits are in {ws.frame!r}")
        if not (math.isfinite(dt_s) and dt_s > 0):
            raise ValueError(f"dt_s must be a finite number > 0, got {dt_s}")
        values = [*grasp.position, grasp.yaw, grasp.width]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"non-finite grasp: position {grasp.position.tolist()}, yaw {grasp.yaw}, "
                             f"width {grasp.width}")
        notes = []
        low = np.array(ws.min_xyz, np.float64)
        floor = low[2] < ws.finger_floor_m
        low[2] = max(low[2], ws.finger_floor_m)
        high = np.array(ws.max_xyz, np.float64)
        position = np.clip(np.asarray(grasp.position, np.float64), low, high)
        for axis, before, after in zip("xyz", grasp.position, position):
            if before != after:
                why = "above the table" if axis == "z" and floor and after == low[2] else "workspace"
                notes.append(f"{axis} {before:.3f} -> {after:.3f} m ({why})")
        width = min(max(float(grasp.width), 0.0), self.max_opening_m)
        if width != grasp.width:
            notes.append(f"width {grasp.width:.3f} -> {width:.3f} m (max opening)")
        yaw = float(grasp.yaw)
        if previous is not None:
            start = np.clip(np.asarray(previous.position, np.float64), low, high)
            if not np.array_equal(start, previous.position):
                # the workspace was narrowed since: rate-limiting from outside would keep the setpoints outside
                # for several periods, so the step starts at the nearest point of the current box
                notes.append(f"previous setpoint {np.round(previous.position, 3).tolist()} is outside the workspace: "
                             f"moved from {np.round(start, 3).tolist()}")
            step = position - start
            distance, reach = float(np.linalg.norm(step)), self.max_speed_mps * dt_s
            if distance > reach:
                position = start + step * (reach / distance)
                notes.append(f"moved {reach:.3f} of {distance:.3f} m (max speed {self.max_speed_mps:g} m/s)")
            turn, reach = yaw_difference(yaw, previous.yaw), self.max_yaw_rate_rps * dt_s
            if abs(turn) > reach:
                yaw = previous.yaw + math.copysign(reach, turn)
                notes.append(f"turned {reach:.3f} of {abs(turn):.3f} rad (max yaw rate {self.max_yaw_rate_rps:g} "
                             "rad/s)")
        return replace(grasp, position=position, width=width, yaw=yaw), notes
