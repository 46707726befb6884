"""The product's Pick client: sends a goal, watches the camera and masks while it runs, and keeps a visual
record (the frame perception used, annotated; the frame after the grasp) and a summary. `pick_in_graph`
starts a graph, picks once with it and stops it (`dino-vla sim-pick`)."""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TextIO

import numpy as np
import rclpy
from action_msgs.msg import GoalStatus, GoalStatusArray
from rclpy.action import ActionClient
from rclpy.action.client import ClientGoalHandle
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_action_status_default
from sensor_msgs.msg import Image
from unique_identifier_msgs.msg import UUID

from dino_vla.action import Pick
from dino_vla.graph import CameraTopics, NodeSpec
from dino_vla.msg import SegmentationMasks
from dino_vla.ros.conversions import image_to_rgb
from dino_vla.ros.launcher import RunningGraph, start_graph
from dino_vla.ros.messages import masks_from_msg, stamp_ns
from dino_vla.types import Detections


GOAL_RESPONSE_TIMEOUT_S = 10.0
RESULT_RETRY_S = 2.0
FINISHED = (GoalStatus.STATUS_SUCCEEDED, GoalStatus.STATUS_ABORTED, GoalStatus.STATUS_CANCELED)


@dataclass
class PickRecord:
    result: Pick.Result
    stages: list[tuple[float, str, str]]   # (seconds since the goal, stage, detail)
    perceived: tuple[np.ndarray, SegmentationMasks] | None   # the image + masks the pick was planned on
    after: np.ndarray | None               # the camera image once the outcome was in


class PickClient:
    """An rclpy node that sends Pick goals and watches the camera and masks while it does.

    A goal goes out once the server is discovered, but the server may not yet have discovered this client's
    response reader: Fast DDS then drops the goal response ("client will not receive response") while the
    goal runs. So the action's status topic (transient local) is watched too: a goal listed there was
    accepted, whatever became of its response. A goal is never sent twice, since a second one would move
    the robot twice."""

    def __init__(self, camera: CameraTopics = CameraTopics(), action: str = "pick",
                 node_name: str = "dino_vla_pick_client"):
        self.node = rclpy.create_node(node_name)
        self.client = ActionClient(self.node, Pick, action)
        self.images: dict[int, Image] = {}
        self.masks: SegmentationMasks | None = None
        self.goal_statuses: dict[bytes, int] = {}
        self.node.create_subscription(Image, camera.image, self._on_image, 5)
        self.node.create_subscription(SegmentationMasks, "masks", self._on_masks, 5)
        self.status_topic = self.node.resolve_topic_name(f"{action}/_action/status")
        self.node.create_subscription(GoalStatusArray, self.status_topic, self._on_statuses,
                                      qos_profile_action_status_default)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)

    def _on_image(self, msg: Image) -> None:
        self.images[stamp_ns(msg.header)] = msg
        for old in sorted(self.images)[:-60]:
            del self.images[old]

    def _on_masks(self, msg: SegmentationMasks) -> None:
        self.masks = msg

    def _on_statuses(self, msg: GoalStatusArray) -> None:
        self.goal_statuses = {bytes(s.goal_info.goal_id.uuid): s.status for s in msg.status_list}

    def spin_until(self, done, timeout_s: float, graph: RunningGraph | None = None) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done():
                return True
            if graph is not None and graph.failed():
                name, code = graph.failed()
                raise RuntimeError(f"node {name} exited with code {code}")
            self.executor.spin_once(timeout_sec=0.05)
        return done()

    def wait_for_nodes(self, specs: Sequence[NodeSpec], timeout_s: float = 120.0, graph: RunningGraph | None = None,
                       namespace: str = "") -> None:
        """Until every node of `specs` publishes its ready_topic: model nodes do only once their model is
        loaded, which takes far longer than the pick node's start, so a goal sent earlier would time out."""
        prefix = f"/{namespace.strip('/')}" if namespace.strip("/") else ""

        def ready(spec: NodeSpec) -> bool:
            return any(info.node_name == spec.name
                       for info in self.node.get_publishers_info_by_topic(f"{prefix}/{spec.ready_topic}"))

        waiting = [spec for spec in specs if spec.ready_topic]
        if not self.spin_until(lambda: all(map(ready, waiting)), timeout_s, graph):
            raise RuntimeError(f"node(s) {', '.join(s.name for s in waiting if not ready(s))} not ready within "
                               f"{timeout_s:g} s")

    def server_count(self) -> int:
        """How many action servers of this client's action are discovered (each publishes its status)."""
        return self.node.count_publishers(self.status_topic)

    def pick(self, instruction: str, timeout_s: float, graph: RunningGraph | None = None) -> PickRecord:
        if not self.spin_until(self.client.server_is_ready, 120.0, graph):
            raise RuntimeError("no pick action server within 120 s")
        start, stages = time.monotonic(), []
        perceived: list = []

        def on_feedback(msg) -> None:
            stages.append((round(time.monotonic() - start, 3), msg.feedback.stage, msg.feedback.detail))
            # the masks in hand when perception is first used (the policy's grasps skip `localising`)
            if msg.feedback.stage in ("localising", "planning") and not perceived and self.masks is not None:
                image = self.images.get(stamp_ns(self.masks.header))
                if image is not None:
                    perceived.append((image_to_rgb(image), self.masks))

        goal = self._send_goal(Pick.Goal(instruction=instruction), on_feedback, graph)
        result = self._await_result(goal, timeout_s, graph)
        done_ns = self.node.get_clock().now().nanoseconds
        self.spin_until(lambda: any(t > done_ns for t in self.images), 5.0, graph)
        newest = [t for t in self.images if t > done_ns]
        after = image_to_rgb(self.images[max(newest)]) if newest else None
        return PickRecord(result, stages, perceived[0] if perceived else None, after)

    def _send_goal(self, goal: Pick.Goal, on_feedback, graph: RunningGraph | None) -> ClientGoalHandle:
        goal_id = UUID(uuid=list(uuid.uuid4().bytes))
        key = bytes(goal_id.uuid)
        sent = self.client.send_goal_async(goal, feedback_callback=on_feedback, goal_uuid=goal_id)
        if not self.spin_until(lambda: sent.done() or key in self.goal_statuses, GOAL_RESPONSE_TIMEOUT_S, graph):
            raise RuntimeError(f"the pick action server neither answered nor listed the goal within "
                               f"{GOAL_RESPONSE_TIMEOUT_S:g} s")
        if sent.done():
            if not sent.result().accepted:
                raise RuntimeError("the pick action server rejected the goal")
            return sent.result()
        self.node.get_logger().warning("the goal response was lost; the goal is on the server's status list, "
                                       "so its result is asked for directly")
        return ClientGoalHandle(self.client, goal_id, Pick.Impl.SendGoalService.Response(accepted=True))

    def _await_result(self, goal: ClientGoalHandle, timeout_s: float, graph: RunningGraph | None) -> Pick.Result:
        """The result; asked for again when the goal has ended on the server but no answer came, which is
        the same lost-response race on the result service."""
        deadline = time.monotonic() + timeout_s
        key = bytes(goal.goal_id.uuid)
        answer = goal.get_result_async()
        while not self.spin_until(answer.done, min(RESULT_RETRY_S, max(0.0, deadline - time.monotonic())), graph):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no pick result within {timeout_s:g} s")
            if self.goal_statuses.get(key) in FINISHED:
                answer = goal.get_result_async()
        return answer.result().result

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def write_record(record: PickRecord, out_dir: Path, banner: str | None) -> dict[str, Any]:
    """out_dir/perceived.png (masks the pick used), after.png (after the grasp), summary.json."""
    from PIL import Image as PILImage

    from dino_vla.pipeline.annotate import annotate

    out_dir.mkdir(parents=True, exist_ok=True)
    r = record.result
    files = {}
    if record.perceived is not None:
        rgb, masks_msg = record.perceived
        detections, masks = masks_from_msg(masks_msg)
        PILImage.fromarray(annotate(rgb, detections, masks, banner)).save(out_dir / "perceived.png")
        files["perceived"] = str(out_dir / "perceived.png")
    if record.after is not None:
        verdict = "SUCCESS" if r.success else f"FAILED: {r.failure_reason}"
        PILImage.fromarray(annotate(record.after, Detections.empty(record.after.shape[:2]), None, verdict)).save(
            out_dir / "after.png")
        files["after"] = str(out_dir / "after.png")
    p, o = r.grasp.grasp_pose.position, r.object.pose.position
    summary = {
        "success": r.success, "failure_reason": r.failure_reason, "message": r.message,
        "target_phrase": r.target_phrase, "perception_source": r.perception_source,
        "chosen_object": r.object.class_id or None,
        "object_position_m": [round(v, 4) for v in (o.x, o.y, o.z)] if r.object.has_pose else None,
        "grasp": {"frame": r.grasp.header.frame_id, "position_m": [round(v, 4) for v in (p.x, p.y, p.z)],
                  "width_m": round(r.grasp.gripper_width, 4), "score": round(r.grasp.score, 3),
                  "dry_run": r.grasp.dry_run} if r.grasp.header.frame_id else None,
        "lifted_object": r.lifted_object or None, "lifted_m": round(r.lifted_m, 4),
        "elapsed_s": round(r.elapsed_s, 3),
        "stages": [{"t_s": t, "stage": s, "detail": d} for t, s, d in record.stages],
        "files": files,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def pick_in_graph(instruction: str, params_files: list[str], env: dict[str, str], specs: tuple[NodeSpec, ...],
                  node_params: dict[str, dict[str, Any]], log: TextIO, timeout_s: float = 180.0,
                  device: str | None = None) -> PickRecord:
    """Start `specs` as processes (start_graph) on the DDS environment `env`, send one Pick goal with the
    product's client and stop the graph again. RuntimeError when no result came (a node died, no server,
    a timeout): the nodes' output is in `log`."""
    graph = start_graph(params_files, env, specs=specs, device=device, node_params=node_params, stdout=log,
                        stderr=log)
    os.environ.update(env)  # this process's own participant must use the same DDS settings
    rclpy.init()
    client = PickClient()
    try:
        client.wait_for_nodes(specs, graph=graph)
        # On a domain shared with another graph (a --domain-id chosen by hand) a goal could be answered by its
        # pick server instead; its server is discovered by now when it already runs.
        servers = client.server_count()
        if servers > 1:
            raise RuntimeError(f"{servers} pick action servers on ROS domain {env.get('ROS_DOMAIN_ID')}, "
                               f"one of them started here: another graph shares the domain, so a goal could go "
                               f"to its server; use a free domain (--domain-id free)")
        return client.pick(instruction, timeout_s, graph)
    finally:
        client.close()
        rclpy.try_shutdown()
        graph.stop()
