"""The pick decision, ROS-free: one frame's masks + aligned depth -> the target's 3D object -> a grasp,
or a PickFailure that says why not. The localiser and pick nodes, `dino-vla sim-pick` and the pick
benchmark all call this, so what is benchmarked is what runs on the robot."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dino_vla.config import ConfigError
from dino_vla.geometry.grasp_planner import GraspPlanner, GraspRefused, GripperSpec, Workspace
from dino_vla.geometry.depth import DepthFrame
from dino_vla.geometry.localise import LocaliserSettings, NoPointsError, localise
from dino_vla.types import Detections, Grasp, Masks, Object3D, RigidTransform

# Result codes of a pick (also the Pick action's failure_reason); GraspRefused adds its own reasons.
FAILURE_REASONS = ("bad_instruction", "timeout", "no_object", "no_points", "too_wide", "outside_workspace",
                   "too_small", "wrong_frame", "too_few_points", "execution_failed", "wrong_object",
                   "dry_run", "cancelled", "internal_error")


PLANNER_SOURCE = "geometric planner"   # GraspCommand.source of the planner's grasps


class PickFailure(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PickSettings:
    localiser: LocaliserSettings
    gripper: GripperSpec
    workspace: Workspace

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "PickSettings":
        """From the pick node's validated parameters (config.NODE_PARAMS["pick"]); parameters that are
        valid one by one but not together (workspace_min above workspace_max) raise ConfigError."""
        try:
            return cls._from_params(params)
        except ValueError as err:
            raise ConfigError(f"pick parameters: {err}") from None

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> "PickSettings":
        return cls(localiser_settings(params),
                   GripperSpec(max_width_m=params["gripper_max_width_m"],
                               finger_length_m=params["gripper_finger_length_m"],
                               clearance_m=params["gripper_clearance_m"]),
                   Workspace(frame=params["target_frame"], min_xyz=params["workspace_min"], max_xyz=params["workspace_max"],
                             table_height_m=params["table_height_m"]))


def localiser_settings(params: dict[str, Any]) -> LocaliserSettings:
    return LocaliserSettings(depth_min_m=params["depth_min_m"], depth_max_m=params["depth_max_m"],
                             outlier_neighbours=params["outlier_neighbours"],
                             outlier_std_ratio=params["outlier_std_ratio"], min_points=params["min_points"])


def localise_detections(frame: DepthFrame, detections: Detections, masks: Masks, settings: LocaliserSettings,
                        camera_to_target: RigidTransform | None = None
                        ) -> list[Object3D | NoPointsError]:
    """One entry per detection, in its order: the object (in camera_to_target.parent when given, else in
    the camera frame) or the NoPointsError saying why it has no 3D position."""
    if len(masks) != len(detections):
        raise ValueError(f"{len(masks)} masks for {len(detections)} detections")
    out: list[Object3D | NoPointsError] = []
    for i in range(len(detections)):
        try:
            obj = localise(frame, masks.masks[i], detections.phrases[i], float(detections.scores[i]), settings)
            out.append(obj if camera_to_target is None else obj.transformed(camera_to_target))
        except NoPointsError as err:
            out.append(err)
    return out


@dataclass(frozen=True)
class PickPlan:
    target_phrase: str
    chosen: Object3D           # the object the grasp is for, in the target frame
    detection_index: int       # which of the detections it is
    grasp: Grasp
    candidates: int            # detections of the target phrase


class PickPlanner:
    def __init__(self, settings: PickSettings):
        self.settings = settings
        self.grasp_planner = GraspPlanner(settings.gripper, settings.workspace)

    def plan(self, frame: DepthFrame, detections: Detections, masks: Masks, target_phrase: str,
             camera_to_target: RigidTransform) -> PickPlan:
        """Grasp the best-scoring detection of `target_phrase` that has 3D points; other phrases of the
        instruction (reference objects such as "the laptop") are never grasped."""
        if frame.frame != camera_to_target.child:
            raise PickFailure("wrong_frame", f"depth is in {frame.frame!r}, the camera pose is for "
                                             f"{camera_to_target.child!r}")
        candidates = [i for i in np.argsort(-detections.scores, kind="stable")
                      if detections.phrases[i] == target_phrase]
        if not candidates:
            seen = ", ".join(sorted(set(detections.phrases))) or "nothing"
            raise PickFailure("no_object", f"no {target_phrase!r} detected (saw: {seen})")
        if len(masks) != len(detections):
            raise ValueError(f"{len(masks)} masks for {len(detections)} detections")
        # best first, stopping at the first with usable depth: reference objects are never localised here
        problems = []
        for index in candidates:
            try:
                chosen = localise(frame, masks.masks[index], target_phrase, float(detections.scores[index]),
                                  self.settings.localiser).transformed(camera_to_target)
                break
            except NoPointsError as err:
                problems.append(err)
        else:
            raise PickFailure("no_points", f"{len(candidates)} {target_phrase!r} detection(s), none with "
                                           f"usable depth: {problems[0]}")
        try:
            grasp = self.grasp_planner.plan(chosen)
        except GraspRefused as err:
            raise PickFailure(err.reason, str(err)) from None
        return PickPlan(target_phrase, chosen, int(index), grasp, len(candidates))
