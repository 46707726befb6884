"""pick node: the `pick` action (dino_vla/action/Pick). A goal's instruction goes to the detector (or
the simulator's ground-truth segmentation) and the policy node on `instruction`. The grasp comes from the
geometric planner (grasp_source planner: the first masks + depth newer than the goal are localised and a
grasp is planned for the instruction's target) or from the policy node (grasp_source policy: the newest
grasp on `policy/grasp` made for the goal's instruction from perception newer than the goal). Either is
sent on `grasp_command` and the executor's `grasp_outcome` decides the result. Every wait has a timeout,
so stale inputs give a `timeout` result, never a hang."""
from __future__ import annotations

import threading
import time
import traceback
from typing import Callable, TypeVar

from geometry_msgs.msg import PoseStamped
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header, String

from dino_vla.action import Pick
from dino_vla.instruction import InstructionError, parse_instruction
from dino_vla.msg import GraspCommand, GraspOutcome
from dino_vla.pick import FAILURE_REASONS, PLANNER_SOURCE, PickFailure, PickPlanner, PickSettings
from dino_vla.ros.depth_inputs import CameraExtrinsic, DepthMaskInputs, MaskedDepth
from dino_vla.ros.messages import grasp_from_msg, grasp_to_msg, objects_to_msg, stamp_ns
from dino_vla.ros.node_base import ConfiguredNode, run_node
from dino_vla.types import Grasp

T = TypeVar("T")


class PickCancelled(Exception):
    pass


class _StartupGoal:
    """The `instruction` parameter's one pick, run through the same code as an action goal."""

    def __init__(self, node: "PickNode", instruction: str):
        self.node, self.request = node, Pick.Goal(instruction=instruction)
        self.is_cancel_requested = False

    def publish_feedback(self, feedback: Pick.Feedback) -> None:
        self.node.get_logger().info(f"start-up pick: {feedback.stage} {feedback.detail}")

    def succeed(self) -> None:
        pass

    abort = canceled = succeed


class PickNode(ConfiguredNode):
    STAGE = "pick"
    MULTI_THREADED = True

    def __init__(self):
        super().__init__()
        self.planner = PickPlanner(PickSettings.from_params(self.params))
        self._changed = threading.Condition()
        self._latest: MaskedDepth | None = None
        self._policy_grasp: GraspCommand | None = None
        # only the outcome of the command in flight is kept: other publishers' outcomes are not collected
        self._awaited: int | None = None
        self._outcome: GraspOutcome | None = None
        self._busy = threading.Lock()
        self._stopping = threading.Event()
        inputs = MutuallyExclusiveCallbackGroup()
        if self.params["grasp_source"] == "policy":
            self.create_subscription(GraspCommand, "policy/grasp", self.on_policy_grasp, 10, callback_group=inputs)
        else:
            self.extrinsic = CameraExtrinsic(self, self.params)
            self.inputs = DepthMaskInputs(self, self.params, self.on_masked_depth, callback_group=inputs)
        self.create_subscription(GraspOutcome, "grasp_outcome", self.on_outcome, 10, callback_group=inputs)
        # transient local: a detector that starts later still receives the current instruction
        self.instruction_publisher = self.create_publisher(String, "instruction", QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.command_publisher = self.create_publisher(GraspCommand, "grasp_command", 10)
        self.grasp_pose_publisher = self.create_publisher(PoseStamped, "grasp_pose", 1)
        self.server = ActionServer(self, Pick, "pick", execute_callback=self.execute,
                                   goal_callback=self.on_goal, cancel_callback=lambda _: CancelResponse.ACCEPT,
                                   callback_group=ReentrantCallbackGroup())
        self.get_logger().info(f"pick action ready (grasps from the {self.params['grasp_source']}, "
                               f"dry_run={self.params['dry_run']}, frame {self.params['target_frame']!r})")
        self._startup_pick: threading.Thread | None = None
        if self.params["instruction"]:
            self._startup_pick = threading.Thread(target=self.execute,
                                                  args=(_StartupGoal(self, self.params["instruction"]),), daemon=True)
            self._startup_pick.start()

    def on_masked_depth(self, m: MaskedDepth) -> None:
        with self._changed:
            self._latest = m
            self._changed.notify_all()

    def on_policy_grasp(self, msg: GraspCommand) -> None:
        with self._changed:
            self._policy_grasp = msg
            self._changed.notify_all()

    def on_outcome(self, msg: GraspOutcome) -> None:
        with self._changed:
            if stamp_ns(msg.header) == self._awaited:
                self._outcome = msg
                self._changed.notify_all()

    def apply_parameters(self, updated) -> None:
        # the planner's gripper, workspace and localisation settings follow run-time changes
        self.planner = PickPlanner(PickSettings.from_params({**self.params, **updated}))  # ConfigError rejects

    def stop(self) -> None:
        # a pick waiting for perception or an outcome ends now (within _wait's 0.1 s), not at its timeout
        self._stopping.set()
        if self._startup_pick is not None:
            self._startup_pick.join()

    def on_goal(self, _goal) -> GoalResponse:
        # one arm, one pick at a time
        return GoalResponse.REJECT if self._busy.locked() else GoalResponse.ACCEPT

    def _wait(self, goal_handle, ready: Callable[[], T | None], timeout_s: float) -> T | None:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while (value := ready()) is None:
                if goal_handle.is_cancel_requested:
                    raise PickCancelled()
                if self._stopping.is_set():
                    raise PickFailure("cancelled", "the pick node was stopped (SIGINT or SIGTERM) before the "
                                                   "pick ended")
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(min(left, 0.1))
            return value

    def execute(self, goal_handle) -> Pick.Result:
        with self._busy:
            start = time.monotonic()
            result = Pick.Result()
            try:
                self._pick(goal_handle, result)
                result.success = True
            except PickFailure as err:
                result.failure_reason, result.message = err.reason, str(err)
            except PickCancelled:
                result.failure_reason, result.message = "cancelled", "cancelled by the caller; STOP sent"
                self.send_stop("the Pick goal was cancelled")
            except Exception as err:  # a bug must still end the goal with a result that says so
                self.get_logger().error(traceback.format_exc())
                result.failure_reason, result.message = "internal_error", f"{type(err).__name__}: {err}"
            result.elapsed_s = time.monotonic() - start
            outcome = result.failure_reason or "success"
            summary = f"pick {goal_handle.request.instruction!r}: {outcome}: {result.message}"
            if result.success:  # rclpy refuses two severities from one logging call site
                self.get_logger().info(summary)
            else:
                self.get_logger().warning(summary)
            if goal_handle.is_cancel_requested and result.failure_reason == "cancelled":
                goal_handle.canceled()
            elif result.success:
                goal_handle.succeed()
            else:
                goal_handle.abort()
            return result

    def send_stop(self, why: str) -> None:
        """STOP on grasp_command: an executor halts whatever it is doing (a cancelled goal's arm must not go on
        to lift). Sent on every cancel, also before a grasp went out: stopping an idle arm is harmless."""
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.params["target_frame"])
        self.command_publisher.publish(GraspCommand(header=header, command=GraspCommand.STOP, dry_run=False,
                                                    reason=why))
        self.get_logger().warning(f"sent STOP on grasp_command: {why}")

    def _feedback(self, goal_handle, stage: str, detail: str = "") -> None:
        goal_handle.publish_feedback(Pick.Feedback(stage=stage, detail=detail))

    def _pick(self, goal_handle, result: Pick.Result) -> None:
        instruction = goal_handle.request.instruction
        try:
            query = parse_instruction(instruction)
        except InstructionError as err:
            raise PickFailure("bad_instruction", str(err)) from None
        if query.parsed.action != "pick":
            raise PickFailure("bad_instruction", f"{instruction!r} asks to {query.parsed.action} the "
                                                 f"{query.target}, not to pick it up: nothing is moved")
        result.target_phrase = query.target
        since = self.get_clock().now().nanoseconds
        self.instruction_publisher.publish(String(data=instruction))
        if self.params["grasp_source"] == "policy":
            header, grasp, source, basis = self._policy_grasp_for(goal_handle, instruction, since, result)
        else:
            header, grasp, source, basis = self._planned_grasp(goal_handle, instruction, query, since, result)
        result.grasp = grasp_to_msg(header, grasp, self.params["dry_run"], instruction, source)
        self.grasp_pose_publisher.publish(PoseStamped(header=header, pose=result.grasp.grasp_pose))
        self._feedback(goal_handle, "executing", f"width {grasp.width:.3f} m, yaw {grasp.yaw:.2f} rad")
        timeout = self.params["execution_timeout_s"]
        # a command sent before discovery has matched the executor would be lost: there is one per pick
        if not self._wait(goal_handle, lambda: self.command_publisher.get_subscription_count() > 0 or None, timeout):
            raise PickFailure("timeout", f"no executor subscribed to grasp_command within {timeout:g} s")
        with self._changed:
            self._awaited, self._outcome = stamp_ns(header), None
        try:
            self.command_publisher.publish(result.grasp)
            outcome = self._wait(goal_handle, lambda: self._outcome, timeout)
        finally:
            with self._changed:
                self._awaited = None
        if outcome is None:
            raise PickFailure("timeout", f"no grasp_outcome from the executor within {timeout:g} s")
        self._feedback(goal_handle, "verifying", outcome.reason)
        result.lifted_object, result.lifted_m = outcome.lifted_object, outcome.lifted_m
        if outcome.dry_run:
            raise PickFailure("dry_run", "dry run: the grasp was planned and sent marked dry_run; nothing moved")
        if not outcome.success:
            raise PickFailure("wrong_object" if outcome.lifted_object else "execution_failed",
                              outcome.reason or "the executor reports failure")
        result.message = f"lifted {outcome.lifted_object or grasp.phrase} {outcome.lifted_m:.3f} m ({basis})"

    def _wait_for_fresh(self, goal_handle, newest: Callable[[], T | None], since_ns: int, instruction: str,
                        waiting: str, missing: str, upstream: str) -> T:
        """newest() (masks + depth, or a policy grasp) once it was made for `instruction` from perception stamped
        at or after since_ns; a `timeout` failure naming `missing` and `upstream` after perception_timeout_s."""
        self._feedback(goal_handle, "waiting_for_perception", waiting)
        timeout = self.params["perception_timeout_s"]

        def fresh():
            msg = newest()
            made_for_goal = msg is not None and stamp_ns(msg.header) >= since_ns and msg.instruction == instruction
            return msg if made_for_goal else None

        found = self._wait(goal_handle, fresh, timeout)
        if found is None:
            raise PickFailure("timeout", f"no {missing} within {timeout:g} s: are {upstream} running?")
        return found

    def _planned_grasp(self, goal_handle, instruction: str, query, since: int, result: Pick.Result
                       ) -> tuple[Header, Grasp, str, str]:
        """The geometric planner's grasp for the instruction's target in the first masks + depth newer than
        the goal: (header with the masks' stamp, grasp, command source, what it was based on)."""
        m = self._wait_for_fresh(goal_handle, lambda: self._latest, since, instruction,
                                 f"masks of {query.prompt!r} newer than the goal", f"masks + depth for {instruction!r}",
                                 "the camera, detector and segmenter (or simulator)")
        result.perception_source = m.source
        self._feedback(goal_handle, "localising", f"{len(m.detections)} detection(s) from {m.source}")
        try:
            camera_to_target = self.extrinsic.camera_to_target(m.frame.frame)
        except ValueError as err:
            raise PickFailure("wrong_frame", str(err)) from None
        plan = self.planner.plan(m.frame, m.detections, m.masks, query, camera_to_target)
        self._feedback(goal_handle, "planning", f"{plan.chosen.phrase} at {plan.chosen.centroid.round(3).tolist()}")
        # stamped with the perception it was planned from (GraspCommand.msg), which the outcome pairs with
        header = Header(stamp=m.header.stamp, frame_id=self.params["target_frame"])
        result.object = objects_to_msg(header, [(m.detection_msgs[plan.detection_index], plan.chosen)]).detections[0]
        return header, plan.grasp, PLANNER_SOURCE, f"{plan.candidates} candidate(s), perception: {m.source}"

    def _policy_grasp_for(self, goal_handle, instruction: str, since: int, result: Pick.Result
                          ) -> tuple[Header, Grasp, str, str]:
        """The newest policy grasp made for `instruction` from perception newer than the goal, checked against
        this node's own workspace and gripper: (its header, grasp, its source, what it was based on)."""
        msg = self._wait_for_fresh(goal_handle, lambda: self._policy_grasp, since, instruction,
                                   f"a policy grasp for {instruction!r} newer than the goal on policy/grasp",
                                   f"policy grasp for {instruction!r} on policy/grasp",
                                   "the camera, features, masks (or simulator) and policy nodes")
        result.perception_source = msg.source
        if msg.command == GraspCommand.NONE:
            reason, _, why = msg.reason.partition(": ")
            raise PickFailure(reason if reason in FAILURE_REASONS else "internal_error",
                              f"the policy decided not to act: {why or msg.reason}")
        if msg.header.frame_id != self.params["target_frame"]:
            raise PickFailure("wrong_frame", f"the policy's grasp is in {msg.header.frame_id!r}, this node works in "
                                             f"{self.params['target_frame']!r}")
        grasp, settings = grasp_from_msg(msg), self.planner.settings
        outside = settings.workspace.outside(grasp.position)
        if outside:
            raise PickFailure("outside_workspace", f"the policy's grasp is outside the workspace: {', '.join(outside)}")
        if grasp.width > settings.gripper.max_width_m:
            raise PickFailure("too_wide", f"the policy's grasp opens {grasp.width:.3f} m, the gripper "
                                          f"{settings.gripper.max_width_m:.3f} m")
        self._feedback(goal_handle, "planning", f"{msg.source}: {grasp.phrase} at {grasp.position.round(3).tolist()}, "
                                                f"confidence {msg.score:.2f}")
        return msg.header, grasp, msg.source, f"{msg.source}, confidence {msg.score:.2f}"


def main(args=None) -> int:
    return run_node(PickNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
