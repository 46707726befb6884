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
from dino_vla.geometry.depth_region import Regions, RegionSettings, object_region
from dino_vla.geometry.grounding import Candidate, GroundingFailure, ViewAxes, choose, distinct, fits_colour
from dino_vla.geometry.localise import LocaliserSettings, NoPointsError, localise
from dino_vla.instruction import GroundingQuery
from dino_vla.language import ObjectPhrase
from dino_vla.types import Detections, Grasp, Masks, Object3D, RigidTransform

# Result codes of a pick (also the Pick action's failure_reason); GraspRefused adds its own reasons.
FAILURE_REASONS = ("bad_instruction", "timeout", "no_object", "ambiguous", "no_points", "too_wide",
                   "outside_workspace", "too_small", "wrong_frame", "too_few_points", "execution_failed",
                   "wrong_object", "dry_run", "cancelled", "internal_error")


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
                   Workspace(frame=params["target_frame"], min_xyz=params["workspace_min"],
                             max_xyz=params["workspace_max"],
                             table_height_m=params["table_height_m"]))


def localiser_settings(params: dict[str, Any]) -> LocaliserSettings:
    return LocaliserSettings(depth_min_m=params["depth_min_m"], depth_max_m=params["depth_max_m"],
                             outlier_neighbours=params["outlier_neighbours"],
                             outlier_std_ratio=params["outlier_std_ratio"], min_points=params["min_points"],
                             cluster_eps_m=params["cluster_eps_m"])


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
    candidates: int            # distinct objects detected for the target phrase


class PickPlanner:
    def __init__(self, settings: PickSettings):
        self.settings = settings
        self.grasp_planner = GraspPlanner(settings.gripper, settings.workspace)

    def plan(self, frame: DepthFrame, detections: Detections, masks: Masks, query: GroundingQuery | str,
             camera_to_target: RigidTransform) -> PickPlan:
        """Grasp the object the instruction means among the detections of its target phrase: of its colour
        (measured under the masks), its size word and its spatial relation to the reference objects
        (geometry.grounding's rules). Reference objects are never grasped. PickFailure no_object when
        nothing fits, ambiguous when several do. A plain string is a target phrase with nothing to resolve."""
        if isinstance(query, str):
            query = GroundingQuery(query, query)
        if frame.frame != camera_to_target.child:
            raise PickFailure("wrong_frame", f"depth is in {frame.frame!r}, the camera pose is for "
                                             f"{camera_to_target.child!r}")
        if len(masks) != len(detections):
            raise ValueError(f"{len(masks)} masks for {len(detections)} detections")
        target = query.parsed.target if query.parsed else ObjectPhrase(query.target)
        relation = query.parsed.relation if query.parsed else None
        found, problems = self._candidates(frame, detections, masks, query.target, target, camera_to_target)
        if not found and problems:
            raise PickFailure("no_points", f"{len(problems)} {query.target!r} detection(s), none with usable "
                                           f"depth: {problems[0]}")
        if not found:
            seen = ", ".join(sorted(set(detections.phrases))) or "nothing"
            colours = [c for i, c in enumerate(masks.colours) if detections.phrases[i] == query.target]
            painted = f" (the ones seen are {', '.join(sorted(set(colours)))})" if colours and target.colour else ""
            raise PickFailure("no_object", f"no {query.target!r} detected{painted} (saw: {seen})")
        references = [self._candidates(frame, detections, masks, phrase.phrase, phrase, camera_to_target)[0]
                      for phrase in (relation.references if relation else ())]
        try:
            chosen = choose(target, found, relation, references, ViewAxes.of(camera_to_target))
        except GroundingFailure as err:
            raise PickFailure(err.reason, str(err)) from None
        try:
            grasp = self.grasp_planner.plan(chosen.obj)
        except GraspRefused as err:
            raise PickFailure(err.reason, str(err)) from None
        return PickPlan(query.target, chosen.obj, chosen.index, grasp, len(found))

    def plan_at_pixel(self, frame: DepthFrame, pixel: tuple[float, float], phrase: str, score: float,
                      camera_to_target: RigidTransform, region: RegionSettings = RegionSettings(),
                      cut: Regions | None = None) -> Grasp:
        """The planner's grasp of the object the depth shows at pixel (u, v) (geometry.depth_region): for a
        pointer without masks, the mask-free policy. PickFailure no_points (nothing above the table there,
        too few points) or the planner's refusal. `cut`: the frame's regions where the caller has them."""
        if frame.frame != camera_to_target.child:
            raise PickFailure("wrong_frame", f"depth is in {frame.frame!r}, the camera pose is for "
                                             f"{camera_to_target.child!r}")
        try:
            mask = object_region(frame, camera_to_target, self.settings.workspace.table_height_m, pixel, region,
                                 cut)
            return self.grasp_planner.plan(localise(frame, mask, phrase, score, self.settings.localiser)
                                           .transformed(camera_to_target))
        except NoPointsError as err:
            raise PickFailure("no_points", str(err)) from None
        except GraspRefused as err:
            raise PickFailure(err.reason, str(err)) from None

    def _candidates(self, frame: DepthFrame, detections: Detections, masks: Masks, label: str,
                    phrase: ObjectPhrase, camera_to_target: RigidTransform
                    ) -> tuple[list[Candidate], list[NoPointsError]]:
        """The distinct objects detected as `label` whose measured colour fits `phrase`, localised in the
        target frame (and why those without depth have none)."""
        colours = masks.colours or ("",) * len(detections)
        found, problems = [], []
        for i in np.argsort(-detections.scores, kind="stable"):
            if detections.phrases[i] != label or not fits_colour(colours[i], phrase):
                continue
            score = float(detections.scores[i])
            try:
                obj = localise(frame, masks.masks[i], label, score, self.settings.localiser)
            except NoPointsError as err:
                problems.append(err)
                continue
            found.append(Candidate(int(i), score, colours[i], obj.transformed(camera_to_target)))
        return distinct(found), problems
