"""policy node: the learned VLA grasp policy (dino_vla/policy) on ROS topics, bounded and watched.

DINOv2 `features` are paired by stamp with class-agnostic `masks` + aligned `depth` + `camera_info`
(DepthMaskInputs) for an object-token checkpoint (plus the colour `image` the masks were made from,
DepthMaskImageInputs, when it reads crop features), or with the colour `image` + aligned `depth` + `camera_info`
(DepthImageInputs) for a mask-free one (the checkpoint's kind decides; no masks are subscribed then).
At rate_hz the policy decides on the newest pair for the current instruction (only when
the pair or the instruction is new; otherwise the last decision is published again) and publishes:
- `policy/grasp` (GraspCommand): the decision, clipped into the workspace (above the table) and the
  gripper's opening, stamped with the perception it was made from, marked dry_run as the parameter says;
  or, when it decides not to act (the named object is not there, no usable depth...), a NONE command with
  the reason, which a pick waiting for this policy fails with at once;
- `policy/grasp_pose` (PoseStamped): the setpoint stream: the same grasp, its step from the previous
  setpoint further limited to max_speed_mps and max_yaw_rate_rps;
- `policy/status` (String): `ok: ...` naming every clamp applied, or `waiting: ...`, `stale: ...`,
  `failed <reason>: ...`.
Watchdog: while the newest pair was received more than max_input_age_s ago, or there is no instruction,
only the status goes out. With dry_run false the first decision for each new instruction is also sent
once on `grasp_command`, the executor's topic; never at the rate."""
from __future__ import annotations

import time
from dataclasses import dataclass

from geometry_msgs.msg import PoseStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header, String

from dino_vla.config import ConfigError
from dino_vla.msg import DinoFeatures, GraspCommand
from dino_vla.models.loading import set_torch_threads
from dino_vla.policy.checkpoint import CheckpointError, resolve_checkpoint
from dino_vla.policy.limits import CommandLimits
from dino_vla.pick import PickPlanner, PickSettings
from dino_vla.policy.runner import (LEARNED, GraspPolicy, MaskFreeDecision, MaskFreePolicy, PolicyDecision,
                                   PolicyFailure, load_policy)
from dino_vla.ros.depth_inputs import (CameraExtrinsic, CameraView, DepthImageInputs, DepthMaskImageInputs,
                                      DepthMaskInputs, MaskedDepth)
from dino_vla.ros.messages import features_from_msg, grasp_rotation, grasp_to_msg, pose_msg, stamp_ns
from dino_vla.ros.managed_node import ManagedNode
from dino_vla.ros.node_base import run_node
from dino_vla.sync import ApproximateTimeSync
from dino_vla.types import Features, Grasp

_LIMITS = ("workspace_min", "workspace_max", "table_height_m", "max_opening_m", "max_speed_mps", "max_yaw_rate_rps")
# what the depth planner of a mask-free policy is built from (besides the cell's limits above)
_PLANNER = _LIMITS + ("gripper_finger_length_m", "gripper_clearance_m", "depth_min_m", "depth_max_m", "min_points",
                      "outlier_neighbours", "outlier_std_ratio", "cluster_eps_m")


@dataclass(frozen=True)
class Observation:
    """Features and masks + depth (object-token policy) or image + depth (mask-free) of one camera frame,
    paired by stamp."""

    features: Features
    view: MaskedDepth | CameraView
    received: float            # time.monotonic() when the pair was complete


@dataclass(frozen=True)
class Decided:
    """What the policy made of one observation for one instruction: a decision, or why there is none."""

    observation: Observation
    task: int                  # PolicyNode.task it was made for
    decision: PolicyDecision | MaskFreeDecision | None
    failure: str = ""           # "failed <reason>: <sentence>"
    reason: str = ""            # the failure's reason code


class PolicyNode(ManagedNode):
    STAGE = "policy"

    def __init__(self):
        self.policy: GraspPolicy | MaskFreePolicy | None = None
        super().__init__()

    def configure(self) -> None:
        self.limits = CommandLimits.from_params(self.params)
        set_torch_threads(self.params["torch_threads"])
        checkpoint = resolve_checkpoint(self.params["checkpoint"])
        start = time.perf_counter()
        self.get_logger().info(f"loading policy {checkpoint!r} (device {self.params['device']})")
        try:
            self.policy = self.runtime = load_policy(checkpoint, self.params["device"])
        except (CheckpointError, PolicyFailure) as err:
            raise ConfigError(f"parameter checkpoint: {err}") from None
        self.view_name = " + ".join(("masks",) * self.policy.needs_masks + ("image",) * self.policy.needs_image
                                    + ("depth",))
        self.get_logger().info(f"{self.policy.KIND} policy loaded in {time.perf_counter() - start:.1f} s; it takes "
                               f"features of {self.policy.backbone!r} and {self.view_name}")
        self.grasp_planner = self.depth_planner(self.params)
        self.source = f"policy {checkpoint}"
        self.extrinsic = CameraExtrinsic(self, self.params)
        self.period_s = 1.0 / self.params["rate_hz"]
        self.instruction, self.task = "", 0
        self.grasp_publisher = self.output(GraspCommand, "policy/grasp", 10)
        self.pose_publisher = self.output(PoseStamped, "policy/grasp_pose", 10)
        self.status_publisher = self.output(String, "policy/status", 10)
        self.command_publisher = self.output(GraspCommand, "grasp_command", 10)

    def activate(self) -> None:
        """Inputs start afresh: nothing received before is acted on."""
        self.pairing = ApproximateTimeSync(("features", "view"), int(round(self.params["sync_slop_s"] * 1e9)),
                                           self.params["sync_queue_size"], on_notice=self.report_sync)
        self.received: dict[str, float] = {}   # "features" / "view": time.monotonic() of the newest
        self.observation: Observation | None = None
        self.decided: Decided | None = None
        self.setpoint: Grasp | None = None      # the last one published on policy/grasp_pose
        self.command_due = False                # the current instruction's first decision is still to come
        inputs = (DepthMaskImageInputs if self.policy.needs_image else DepthMaskInputs) if self.policy.needs_masks \
            else DepthImageInputs
        self.inputs = inputs(self, self.params, self.on_view, subscribe=self.input_subscription)
        self.input_subscription(DinoFeatures, "features", self.on_features, 10)
        # transient local: an instruction published before this node started (or while it was inactive)
        # still reaches it
        self.input_subscription(String, "instruction", lambda msg: self.set_instruction(msg.data), QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        if self.params["instruction"]:
            self.set_instruction(self.params["instruction"])
        self.input_timer(self.period_s, self.tick)
        self.get_logger().info(f"policy active at {self.params['rate_hz']:g} Hz (dry_run={self.params['dry_run']}, "
                               f"frame {self.params['target_frame']!r})")

    def deactivate(self) -> None:
        """As if stopped: an activate acts on the instruction parameter and the latched instruction topic
        again, as a fresh start would."""
        self.instruction, self.observation, self.decided = "", None, None

    def cleanup(self) -> None:
        self.policy = None
        self.extrinsic = None
        self.grasp_planner = None

    def apply_parameters(self, updated) -> None:
        if self.policy is None:   # unconfigured: configure takes the new values
            return
        params = {**self.params, **updated}
        # both built before either is kept: a ConfigError from one rejects the whole change
        limits = CommandLimits.from_params(params) if set(_LIMITS) & set(updated) else self.limits
        planner = self.depth_planner(params) if self.grasp_planner is not None and set(_PLANNER) & set(updated) \
            else self.grasp_planner
        self.limits, self.grasp_planner = limits, planner
        if "instruction" in updated:
            self.set_instruction(updated["instruction"])

    def depth_planner(self, params: dict) -> PickPlanner | None:
        """The mask-free policy points; with grasp_geometry depth the pick's planner sizes the grasp there
        (ConfigError: inconsistent parameters)."""
        if self.policy.needs_masks or params["grasp_geometry"] == LEARNED:
            return None
        return PickPlanner(PickSettings.from_params({**params, "gripper_max_width_m": params["max_opening_m"]}))

    def set_instruction(self, text: str) -> None:
        """Every instruction received is a new task, even in the same words (a new Pick goal)."""
        self.instruction, self.task, self.command_due = text, self.task + 1, bool(text)
        self.get_logger().info(f"instruction {text!r}" if text else "instruction cleared: waiting for one")

    def on_features(self, msg: DinoFeatures) -> None:
        try:
            features = features_from_msg(msg)
        except ValueError as err:
            self.report(str(err), f"skipping features stamped {stamp_ns(msg.header) * 1e-9:.3f}")
            return
        self._pair("features", stamp_ns(msg.header), features)

    def on_view(self, m: MaskedDepth | CameraView) -> None:
        self._pair("view", stamp_ns(m.header), m)

    def _pair(self, stream: str, stamp: int, item) -> None:
        now = time.monotonic()
        self.received[stream] = now
        for _, pair in self.pairing.add(stream, stamp, item):
            self.observation = Observation(pair["features"], pair["view"], now)

    def tick(self) -> None:
        if not self.instruction:
            self.publish_status("waiting: no instruction (set the instruction parameter or publish on `instruction`)")
            return
        stale = self.staleness(time.monotonic())
        if stale:
            self.publish_status(f"stale: {stale}")
            self.report(f"stale inputs: {stale}", "no commands", "warning", key="stale inputs")
            return
        d = self.decided
        if d is None or d.observation is not self.observation or d.task != self.task:
            d = self.decided = self.decide(self.observation)
        if d.decision is None:
            self.publish_status(d.failure)
            # the decision not to act goes out too, so that a pick waiting for this policy ends at once
            header = Header(stamp=d.observation.view.header.stamp, frame_id=self.params["target_frame"])
            self.grasp_publisher.publish(GraspCommand(header=header, command=GraspCommand.NONE,
                                                      dry_run=True, instruction=self.instruction,
                                                      source=self.source, reason=d.failure[len("failed "):]))
            return
        try:
            grasp, notes = self.limits.clamp(d.decision.grasp, None, self.period_s)
            setpoint, steps = self.limits.clamp(grasp, self.setpoint, self.period_s)
        except ValueError as err:   # a non-finite grasp is never published
            self.publish_status(f"failed invalid_grasp: {err}")
            return
        self.setpoint = setpoint
        header = Header(stamp=d.observation.view.header.stamp, frame_id=grasp.frame)
        command = grasp_to_msg(header, grasp, self.params["dry_run"], self.instruction, self.source)
        self.grasp_publisher.publish(command)
        self.pose_publisher.publish(PoseStamped(header=header, pose=pose_msg(setpoint.position,
                                                                             grasp_rotation(setpoint))))
        if self.command_due:
            self.command_due = False
            if not self.params["dry_run"]:
                self.command_publisher.publish(command)
                self.get_logger().info(f"sent on grasp_command for {self.instruction!r}: {grasp.phrase} at "
                                       f"{grasp.position.round(3).tolist()}")
        p = grasp.position
        self.publish_status(
            f"ok: {self.chosen(d)} (confidence "
            f"{d.decision.confidence:.2f}) for {self.instruction!r}: grasp at ({p[0]:.3f}, {p[1]:.3f}, {p[2]:.3f}) "
            f"m, width {grasp.width:.3f} m, yaw {grasp.yaw:.2f} rad, {d.decision.latency_ms:.0f} ms"
            + (f"; clamped: {', '.join(notes)}" if notes else "") + (f"; setpoint {', '.join(steps)}" if steps else ""))

    def staleness(self, now: float) -> str:
        """Why the newest observation may not be acted on ("" when it may)."""
        max_age = self.params["max_input_age_s"]
        if self.observation is not None and now - self.observation.received <= max_age:
            return ""
        parts = []
        for stream, name in (("features", "features"), ("view", self.view_name)):
            received = self.received.get(stream)
            if received is None:
                parts.append(f"no {name} yet")
            elif now - received > max_age:
                parts.append(f"{name} {now - received:.1f} s old")
        return ", ".join(parts) or (f"features and {self.view_name} arrive, but none paired by stamp (within "
                                    f"sync_slop_s) in the last {max_age:g} s")

    def decide(self, observation: Observation) -> Decided:
        m = observation.view
        try:
            camera_to_base = self.extrinsic.camera_to_target(m.frame.frame)
        except ValueError as err:
            return self._failed(observation, "wrong_frame", str(err))
        try:
            if self.policy.needs_masks:
                decision = self.policy.decide(self.instruction, observation.features, m.frame, m.masks, camera_to_base,
                                              rgb=m.rgb)
            else:
                decision = self.policy.decide(self.instruction, observation.features, m.rgb, m.frame, camera_to_base,
                                              planner=self.grasp_planner)
        except PolicyFailure as err:
            return self._failed(observation, err.reason, str(err))
        return Decided(observation, self.task, decision)

    @staticmethod
    def chosen(d: Decided) -> str:
        """What the decision grasps, for the status line."""
        if isinstance(d.decision, MaskFreeDecision):
            return f"pixel ({d.decision.pixel[0]:.0f}, {d.decision.pixel[1]:.0f}), {d.decision.geometry} grasp" \
                + (f" ({d.decision.note})" if d.decision.note else "")
        return f"object {d.decision.object_index} of {len(d.observation.view.masks)}"

    def _failed(self, observation: Observation, reason: str, message: str) -> Decided:
        self.report(f"{reason}: {message}", f"no decision for {self.instruction!r}", "warning")
        return Decided(observation, self.task, None, f"failed {reason}: {message}", reason)

    def publish_status(self, text: str) -> None:
        self.status_publisher.publish(String(data=text))


def main(args=None) -> int:
    return run_node(PolicyNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
