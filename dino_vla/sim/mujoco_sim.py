"""A MuJoCo table-top: an RGB-D camera to perceive from, ground truth to score against, and a parallel gripper
that executes a top-down Grasp and reports whether it lifted what it was meant to.

Renders offscreen on the CPU (MUJOCO_GL=egl unless set otherwise), shadows off. MuJoCo writes
MUJOCO_LOG.TXT into the working directory on warnings.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
import mujoco  # noqa: E402

from dino_vla.instruction import normalise_phrases  # noqa: E402
from dino_vla.sim.scene import (  # noqa: E402
    BASE_FRAME, CAMERA_FRAME, CAMERA_NAME, GRIPPER_HOME, GRIPPER_MAX_OPENING, TABLE_HEIGHT, CatalogueObject,
    SceneSpec, to_mjcf)
from dino_vla.types import CameraIntrinsics, Detections, Grasp, Masks, RigidTransform, tight_box  # noqa: E402

__all__ = ["TABLE_HEIGHT", "GraspOutcome", "RenderedFrame", "TabletopSim"]

APPROACH_HEIGHT = 0.20     # pre-grasp: this far above the grasp position
TRAVEL_SPEED = 0.6         # m/s between home and the pre-grasp
DESCENT_SPEED = 0.15       # m/s for the approach and the lift
CLOSE_S = 0.4              # the fingers close at a steady speed over this time...
SQUEEZE_S = 0.3            # ...then hold the squeeze before lifting
HOLD_S = 0.5               # time held at the top before judging the lift
GUARD_FORCE = 15.0         # N of contact force on the gripper that stops the descent
SLIP_RISE = 0.02           # an object that rose this much during the lift and then fell slipped
DISTURB_SHIFT = 0.02       # m an untouched object may move before it counts as knocked
DISTURB_TILT = math.radians(20)


@dataclass(frozen=True)
class RenderedFrame:
    """One RGB-D camera frame, all images aligned pixel for pixel."""

    rgb: np.ndarray            # (H, W, 3) uint8
    depth: np.ndarray          # (H, W) float32 metres along the optical axis; 0 where the ray hits nothing
    segmentation: np.ndarray   # (H, W) uint8: TabletopSim.segmentation_ids of the object seen, 0 for the rest
    sim_time: float            # seconds since the last reset


@dataclass(frozen=True)
class GraspOutcome:
    """What executing one grasp did. An object counts as lifted when it rose by >= 0.8 * lift_m and is still
    touched by both fingers."""

    success: bool                    # some object was lifted
    lifted_object: str | None        # which one
    matches_phrase: bool             # the lifted object is one grasp.phrase names
    lifted_m: dict[str, float]       # rise of every object since the grasp started
    finger_opening: float            # metres between the pads at the end (about 0: closed on nothing)
    reason: str                      # why it failed; "" on success
    blocked_by: str | None           # what stopped the descent early ("table" or an object), if anything
    disturbed: tuple[str, ...]       # objects other than the lifted one that were pushed or tipped
    wall_s: float
    sim_s: float


class ExecutionStopped(Exception):
    """Raised by an execute() step hook to stop the grasp where it is."""


class TabletopSim:
    """The scene of a SceneSpec in MuJoCo. base_link is the world frame (z up, table top at TABLE_HEIGHT)."""

    def __init__(self, spec: SceneSpec, width: int = 640, height: int = 480):
        self.spec = spec
        self.width, self.height = width, height
        self.model = mujoco.MjModel.from_xml_string(to_mjcf(spec, width, height))
        self.data = mujoco.MjData(self.model)
        self._renderer: mujoco.Renderer | None = None
        m = self.model
        self._bodies = {name: m.body(name).id for name in spec.names}
        self._gripper = m.body("gripper").id
        self._fingers = (m.geom("finger_left").id, m.geom("finger_right").id)
        self._mocap = int(m.body("gripper_target").mocapid[0])
        self._opening = m.tendon("opening").id
        # geom -> object name ("table" for the table, None for the floor); gripper geoms are told apart by body
        gripper_bodies = {self._gripper, m.body("finger_left").id, m.body("finger_right").id}
        self._gripper_geoms = {g for g in range(m.ngeom) if m.geom_bodyid[g] in gripper_bodies}
        body_to_name = {b: n for n, b in self._bodies.items()} | {m.body("table").id: "table"}
        self._geom_owner = [body_to_name.get(int(m.geom_bodyid[g])) for g in range(m.ngeom)]
        # each instance's label in rendered segmentation images: 1 + its index in the spec (0 = no object)
        self.segmentation_ids = {name: k + 1 for k, name in enumerate(spec.names)}
        self._kinds = {o.name: o.kind for o in spec.objects}
        self._step_hook: Callable[[], None] | None = None   # set while execute() runs
        self._geom_label = np.zeros(m.ngeom + 1, np.uint8)   # last entry: the -1 MuJoCo gives empty pixels
        for g, owner in enumerate(self._geom_owner):
            if owner in self._bodies:
                self._geom_label[g] = self.segmentation_ids[owner]
        self.reset()

    # ---- state ---------------------------------------------------------------------------------------------
    @property
    def object_names(self) -> tuple[str, ...]:
        return self.spec.names

    @property
    def gripper_home(self) -> np.ndarray:
        """Where the gripper's TCP parks, behind the camera and out of its view."""
        return np.array(GRIPPER_HOME)

    def reset(self) -> None:
        """Back to the spec's layout, the gripper parked and open, sim_time 0."""
        mujoco.mj_resetData(self.model, self.data)
        self.data.ctrl[0] = GRIPPER_MAX_OPENING
        for finger in ("finger_left", "finger_right"):
            self.data.joint(finger).qpos[0] = GRIPPER_MAX_OPENING / 2
        mujoco.mj_forward(self.model, self.data)

    def settle(self, seconds: float = 0.5) -> None:
        """Let the physics run with the gripper held where it is (objects come to rest on the table)."""
        self._step(seconds)

    def object_poses(self) -> dict[str, RigidTransform]:
        """Ground-truth pose of each object's origin (the centre of its main part) in base_link."""
        return {name: RigidTransform(self.data.xmat[b].reshape(3, 3).copy(), self.data.xpos[b].copy(),
                                     BASE_FRAME, name)
                for name, b in self._bodies.items()}

    def reference_grasp(self, name: str) -> Grasp:
        """The top-down grasp a perfect perception would plan: TCP at the object's true origin, fingers closing
        along its y axis (across the mug's handle-free sides and the block's short side), opened 3 cm wider
        than the object."""
        pose = self.object_poses()[name]
        yaw = math.atan2(pose.rotation[1, 0], pose.rotation[0, 0])
        width = min(self._kinds[name].grasp_width + 0.03, GRIPPER_MAX_OPENING)
        return Grasp(pose.translation.copy(), np.array([0.0, 0.0, -1.0]), yaw, width, 1.0, name, BASE_FRAME)

    # ---- camera --------------------------------------------------------------------------------------------
    def intrinsics(self) -> CameraIntrinsics:
        """Pinhole intrinsics of render(): square pixels, principal point at the image centre (OpenCV pixel
        coordinates, pixel centres on integers)."""
        f = 0.5 * self.height / math.tan(math.radians(self.model.cam(CAMERA_NAME).fovy[0]) / 2)
        return CameraIntrinsics(f, f, (self.width - 1) / 2, (self.height - 1) / 2, self.width, self.height)

    def camera_pose(self) -> RigidTransform:
        """camera_color_optical_frame (x right, y down, z forward) in base_link."""
        cam = self.model.cam(CAMERA_NAME).id
        # MuJoCo's camera frame has y up and looks along -z.
        rotation = self.data.cam_xmat[cam].reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
        return RigidTransform(rotation, self.data.cam_xpos[cam].copy(), BASE_FRAME, CAMERA_FRAME)

    def render(self) -> RenderedFrame:
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.height, self.width)
        r = self._renderer
        r.update_scene(self.data, camera=CAMERA_NAME)
        rgb = r.render()
        r.enable_depth_rendering()
        depth = r.render()
        r.enable_segmentation_rendering()
        seg = r.render()
        r.disable_segmentation_rendering()
        far = self.model.vis.map.zfar * self.model.stat.extent
        depth[depth >= 0.999 * far] = 0.0
        geom = np.where(seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM), seg[..., 0], -1)
        return RenderedFrame(rgb, depth, self._geom_label[geom], float(self.data.time))

    def close(self) -> None:
        """Free the offscreen GL context (also freed when the sim is garbage collected)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> "TabletopSim":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- ground truth --------------------------------------------------------------------------------------
    def ground_truth(self, phrase: str, frame: RenderedFrame, min_pixels: int = 30) -> tuple[Detections, Masks]:
        """What a perfect Grounding DINO + SAM would return for one phrase: every visible object of the kind its
        noun names ("cup", "mug"), its box tight around its mask, labelled with the phrase, score 1; its paint
        as the mask's colour. Attribute words (colour, size) do not narrow it: an open-vocabulary detector's
        boxes for "red cup" include other cups, so telling them apart is the pick's job. Objects showing fewer
        than min_pixels pixels count as not visible."""
        label = normalise_phrases([phrase])[0]
        words = label.split()
        names = [n for n in self.object_names if any(self._kinds[n].answers_to(w) for w in words)]
        return self._detections(frame, names, [label] * len(names), min_pixels)

    def ground_truth_all(self, frame: RenderedFrame, min_pixels: int = 30) -> tuple[Detections, Masks]:
        """Every visible object, labelled with its instance name."""
        return self._detections(frame, list(self.object_names), list(self.object_names), min_pixels)

    def _detections(self, frame: RenderedFrame, names: list[str], phrases: list[str],
                    min_pixels: int) -> tuple[Detections, Masks]:
        h, w = frame.segmentation.shape
        boxes, masks, kept, colours = [], [], [], []
        for name, phrase in zip(names, phrases):
            mask = frame.segmentation == self.segmentation_ids[name]
            if mask.sum() < min_pixels:
                continue
            boxes.append(tight_box(mask))
            masks.append(mask)
            kept.append(phrase)
            colours.append(self._kinds[name].colour)
        n = len(kept)
        detections = Detections(np.asarray(boxes, np.float32).reshape(n, 4), np.ones(n, np.float32), tuple(kept),
                                (h, w))
        return detections, Masks(np.asarray(masks, bool).reshape(n, h, w), np.ones(n, np.float32), tuple(colours))

    # ---- grasping ------------------------------------------------------------------------------------------
    def execute(self, grasp: Grasp, lift_m: float = 0.15, step_hook: Callable[[float], None] | None = None
                ) -> GraspOutcome:
        """Run a top-down grasp: open to grasp.width, travel above the grasp, descend straight down (stopping
        early on a hard contact, like a force-guarded move), close with a limited force, lift by lift_m, hold.
        step_hook(sim seconds since the grasp began), when given, runs after every physics step: it may pace
        the motion or raise ExecutionStopped, which holds the gripper where it is and opens it (outcome reason
        `cancelled: ...`).

        The gripper only turns about z, so grasp.approach is not used: it always comes from above. The sim is
        left as the grasp ends (object in hand); reset() restores the layout."""
        if lift_m <= 0:
            raise ValueError(f"lift_m must be positive, got {lift_m}")
        if grasp.frame != BASE_FRAME:
            raise ValueError(f"grasp is in frame {grasp.frame!r}; the simulator executes grasps in {BASE_FRAME!r}")
        grasp.check()
        target = np.asarray(grasp.position, np.float64)
        wall0, sim0 = time.perf_counter(), float(self.data.time)
        self._step_hook = None if step_hook is None else (lambda: step_hook(float(self.data.time) - sim0))
        try:
            return self._execute(grasp, target, lift_m, wall0, sim0)
        except ExecutionStopped as stop:
            d = self.data
            self._step_hook = None
            d.mocap_pos[self._mocap] = d.xpos[self._gripper]
            d.ctrl[0] = GRIPPER_MAX_OPENING
            self._step(0.3)
            return GraspOutcome(success=False, lifted_object=None, matches_phrase=False, lifted_m={},
                                finger_opening=float(d.ten_length[self._opening]), reason=f"cancelled: {stop}",
                                blocked_by=None, disturbed=(), wall_s=time.perf_counter() - wall0,
                                sim_s=float(d.time) - sim0)
        finally:
            self._step_hook = None

    def _execute(self, grasp: Grasp, target: np.ndarray, lift_m: float, wall0: float, sim0: float) -> GraspOutcome:
        d = self.data
        start = self.object_poses()
        start_z = {n: p.translation[2] for n, p in start.items()}
        yaw = self._nearest_equivalent_yaw(grasp.yaw)

        d.ctrl[0] = float(np.clip(grasp.width, 0.0, GRIPPER_MAX_OPENING))
        for _ in self._moving(target + [0.0, 0.0, APPROACH_HEIGHT], yaw, TRAVEL_SPEED):
            pass
        blocked_by = None
        for _ in self._moving(target, yaw, DESCENT_SPEED):
            if (blocked_by := self._hard_contact()) is not None:
                d.mocap_pos[self._mocap] = d.xpos[self._gripper]   # stop there instead of pushing on
                break
        self._step(0.2)
        self._close()
        peak = {n: -math.inf for n in start_z}
        for _ in self._moving(d.mocap_pos[self._mocap] + [0.0, 0.0, lift_m], yaw, DESCENT_SPEED):
            for name, b in self._bodies.items():
                peak[name] = max(peak[name], d.xpos[b][2] - start_z[name])
        self._step(HOLD_S)

        poses = self.object_poses()
        rise = {n: float(poses[n].translation[2] - start_z[n]) for n in poses}
        touching = self._touching_both_fingers()
        held = [n for n in poses if rise[n] >= 0.8 * lift_m and n in touching]
        lifted = max(held, key=rise.get) if held else None
        disturbed = tuple(n for n in poses if n != lifted and _moved(self._kinds[n], start[n], poses[n]))
        if lifted is not None:
            reason = ""
        elif slipped := [n for n in poses if peak[n] >= SLIP_RISE]:
            reason = f"object slipped: {', '.join(slipped)}"
        elif blocked_by is not None:
            reason = f"collided with {blocked_by} during the descent"
        elif disturbed:
            reason = f"collided with {', '.join(disturbed)}"
        else:
            reason = "nothing lifted"
        return GraspOutcome(
            success=lifted is not None, lifted_object=lifted,
            matches_phrase=lifted is not None and self._kinds[lifted].matches(grasp.phrase),
            lifted_m=rise, finger_opening=float(d.ten_length[self._opening]), reason=reason,
            blocked_by=blocked_by, disturbed=disturbed, wall_s=time.perf_counter() - wall0,
            sim_s=float(d.time) - sim0)

    def _mocap_yaw(self) -> float:
        w, x, y, z = self.data.mocap_quat[self._mocap]
        return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))

    def _nearest_equivalent_yaw(self, yaw: float) -> float:
        """The two fingers are interchangeable, so yaw and yaw + pi are the same grasp: take the one closer to
        the gripper's current yaw to turn less."""
        current = self._mocap_yaw()
        return current + (yaw - current + math.pi / 2) % math.pi - math.pi / 2

    def _moving(self, goal: np.ndarray, yaw: float, speed: float) -> Iterator[None]:
        """Drag the mocap target in a straight line to goal at `speed`, turning it to yaw on the way; one
        physics step per iteration, so callers can watch (and stop) the motion."""
        d = self.data
        start, yaw0 = d.mocap_pos[self._mocap].copy(), self._mocap_yaw()
        n = max(1, math.ceil(np.linalg.norm(goal - start) / speed / self.model.opt.timestep))
        for i in range(1, n + 1):
            a = i / n
            d.mocap_pos[self._mocap] = (1 - a) * start + a * goal
            half = ((1 - a) * yaw0 + a * yaw) / 2
            d.mocap_quat[self._mocap] = [math.cos(half), 0.0, 0.0, math.sin(half)]
            self._physics_step()
            yield

    def _close(self) -> None:
        """Ramp the opening command down to fully closed, so the pads meet the object gently instead of
        slamming into it (a fast squeeze can spit an object out), then keep squeezing."""
        d, dt = self.data, self.model.opt.timestep
        start, closed = float(d.ctrl[0]), float(self.model.actuator_ctrlrange[0, 0])
        n = max(1, round(CLOSE_S / dt))
        for i in range(1, n + 1):
            d.ctrl[0] = start + (closed - start) * i / n
            self._physics_step()
        self._step(SQUEEZE_S)

    def _step(self, seconds: float) -> None:
        for _ in range(max(0, round(seconds / self.model.opt.timestep))):
            self._physics_step()

    def _physics_step(self) -> None:
        mujoco.mj_step(self.model, self.data)
        if self._step_hook is not None:
            self._step_hook()

    def _gripper_contacts(self):
        """(contact index, geom1, geom2) of every contact between the gripper and something else."""
        for i in range(self.data.ncon):
            c = self.data.contact[i]
            g1, g2 = int(c.geom1), int(c.geom2)
            if (g1 in self._gripper_geoms) != (g2 in self._gripper_geoms):
                yield i, g1, g2

    def _hard_contact(self) -> str | None:
        """What the gripper presses on with more than GUARD_FORCE in total, if anything (the heaviest)."""
        force: dict[str, float] = {}
        wrench = np.zeros(6)
        for i, g1, g2 in self._gripper_contacts():
            other = g2 if g1 in self._gripper_geoms else g1
            mujoco.mj_contactForce(self.model, self.data, i, wrench)
            name = self._geom_owner[other] or "floor"
            force[name] = force.get(name, 0.0) + abs(wrench[0])
        if sum(force.values()) > GUARD_FORCE:
            return max(force, key=force.get)
        return None

    def _touching_both_fingers(self) -> set[str]:
        touched: dict[str, set[int]] = {}
        for _, g1, g2 in self._gripper_contacts():
            finger, other = (g1, g2) if g1 in self._fingers else (g2, g1)
            if finger in self._fingers and self._geom_owner[other] in self._bodies:
                touched.setdefault(self._geom_owner[other], set()).add(finger)
        return {name for name, fingers in touched.items() if len(fingers) == 2}


def _moved(kind: CatalogueObject, before: RigidTransform, after: RigidTransform) -> bool:
    """Pushed aside or tipped (a ball's orientation says nothing: it rolls)."""
    shift = np.linalg.norm(after.translation[:2] - before.translation[:2])
    tilt = math.acos(np.clip((before.rotation.T @ after.rotation)[2, 2], -1.0, 1.0))
    rolls = kind.parts[0].shape == "sphere"
    return bool(shift > DISTURB_SHIFT or (tilt > DISTURB_TILT and not rolls))
