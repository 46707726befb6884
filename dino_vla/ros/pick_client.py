"""`dino-vla sim-pick`: start the simulated robot and the pick graph, send one Pick goal, and keep a
visual record (the frame perception used, annotated; the frame after the grasp) and a summary."""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image

from dino_vla.action import Pick
from dino_vla.graph import CameraTopics, pick_graph, pick_graph_params
from dino_vla.msg import SegmentationMasks
from dino_vla.ros.conversions import image_to_rgb
from dino_vla.ros.launcher import RunningGraph, start_graph
from dino_vla.ros.messages import masks_from_msg, stamp_ns
from dino_vla.types import Detections


@dataclass
class PickRecord:
    result: Pick.Result
    stages: list[tuple[float, str, str]]   # (seconds since the goal, stage, detail)
    perceived: tuple[np.ndarray, SegmentationMasks] | None   # the image + masks the pick was planned on
    after: np.ndarray | None               # the camera image once the outcome was in


class PickClient:
    """An rclpy node that sends Pick goals and watches the camera and masks while it does."""

    def __init__(self, camera: CameraTopics = CameraTopics()):
        self.node = rclpy.create_node("dino_vla_pick_client")
        self.client = ActionClient(self.node, Pick, "pick")
        self.images: dict[int, Image] = {}
        self.masks: SegmentationMasks | None = None
        self.node.create_subscription(Image, camera.image, self._on_image, 5)
        self.node.create_subscription(SegmentationMasks, "masks", self._on_masks, 5)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)

    def _on_image(self, msg: Image) -> None:
        self.images[stamp_ns(msg.header)] = msg
        for old in sorted(self.images)[:-60]:
            del self.images[old]

    def _on_masks(self, msg: SegmentationMasks) -> None:
        self.masks = msg

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

        sent = self.client.send_goal_async(Pick.Goal(instruction=instruction), feedback_callback=on_feedback)
        if not self.spin_until(sent.done, 10.0, graph) or not sent.result().accepted:
            raise RuntimeError("the pick action server did not accept the goal")
        answer = sent.result().get_result_async()
        if not self.spin_until(answer.done, timeout_s, graph):
            raise RuntimeError(f"no pick result within {timeout_s:g} s")
        result = answer.result().result
        done_ns = self.node.get_clock().now().nanoseconds
        self.spin_until(lambda: any(t > done_ns for t in self.images), 5.0, graph)
        newest = [t for t in self.images if t > done_ns]
        after = image_to_rgb(self.images[max(newest)]) if newest else None
        return PickRecord(result, stages, perceived[0] if perceived else None, after)

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


def run_sim_pick(args) -> int:
    from dino_vla.cli import _choose_perception, _config_files
    from dino_vla.dds import DdsProfileError, loopback_environment
    from dino_vla.policy.checkpoint import CheckpointError

    try:
        env = loopback_environment(args.dds_profile)
    except DdsProfileError as err:
        print(f"dino-vla sim-pick: {err}", file=sys.stderr)
        return 2
    files = _config_files(args, ("perception.yaml", "pick.yaml", "policy.yaml", "sim.yaml"))
    model_perception, banner = _choose_perception(args, files)
    try:
        node_params = pick_graph_params(True, model_perception, args.grasp_source, files)
    except CheckpointError as err:
        print(f"dino-vla sim-pick: policy checkpoint: {err}", file=sys.stderr)
        return 1
    node_params["sim"]["seed"] = args.seed
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "nodes.log", "w")
    graph = start_graph(files, env, specs=pick_graph(True, model_perception, args.grasp_source), device=args.device,
                        node_params=node_params, stdout=log, stderr=log)
    os.environ.update(env)  # this process's own participant must use the same loopback profile
    rclpy.init()
    client = PickClient()
    try:
        record = client.pick(args.instruction, args.timeout, graph)
    except RuntimeError as err:
        print(f"dino-vla sim-pick: {err}; node logs in {out_dir / 'nodes.log'}", file=sys.stderr)
        return 1
    finally:
        client.close()
        rclpy.try_shutdown()
        graph.stop()
        log.close()
    summary = write_record(record, out_dir, banner)
    print(json.dumps(summary, indent=2))
    return 0 if record.result.success else 3
