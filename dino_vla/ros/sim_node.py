"""sim node: the MuJoCo table-top as a robot. Publishes an RGB-D camera (RealSense-style topics: `image`,
`depth` aligned to it, `camera_info`) at rate_hz, executes GraspCommand from `grasp_command` and answers
on `grasp_outcome`, and publishes ground truth for evaluation (`sim/objects`: every object's pose in
base_frame; `sim/segmentation`: every object's mask). With ground_truth_masks it also publishes `masks`,
labelled "simulator ground truth", in place of the detector + segmenter: of the objects the current
`instruction` names (masks_scope instruction), or of every visible object labelled "object" (all_objects,
the class-agnostic masks the policy takes)."""
from __future__ import annotations

import threading
import time

import numpy as np
from geometry_msgs.msg import Vector3
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header, String

from dino_vla.instruction import GroundingQuery, InstructionError, parse_instruction
from dino_vla.msg import Detection, DetectionArray, GraspCommand, GraspOutcome, SegmentationMasks
from dino_vla.ros.conversions import numpy_to_image
from dino_vla.ros.messages import (camera_info_msg, detections_to_msg, grasp_from_msg, masks_to_msg,
                                   pose_msg)
from dino_vla.ros.node_base import ConfiguredNode, run_node
from dino_vla.sim.mujoco_sim import ExecutionStopped, TabletopSim
from dino_vla.sim.scene import random_scene
from dino_vla.sim.stand_in import SOURCE, class_agnostic, ground_truth_perception


class SimNode(ConfiguredNode):
    STAGE = "sim"

    def __init__(self):
        super().__init__()
        # a grasp executes in its own thread so that a STOP can be taken meanwhile; rendering stays on the
        # executor's thread (an EGL context belongs to the thread that made it); one user of the sim at a time
        self._sim_lock = threading.Lock()
        self._stop = threading.Event()
        self._grasp_thread: threading.Thread | None = None
        self.sim: TabletopSim | None = None
        self.load_scene(self.params)
        self.query: GroundingQuery | None = None
        self.image_publisher = self.create_publisher(Image, "image", 1)
        self.depth_publisher = self.create_publisher(Image, "depth", 1)
        self.info_publisher = self.create_publisher(CameraInfo, "camera_info", 1)
        self.masks_publisher = self.create_publisher(SegmentationMasks, "masks", 10)
        self.objects_publisher = self.create_publisher(DetectionArray, "sim/objects", 1)
        self.segmentation_publisher = self.create_publisher(SegmentationMasks, "sim/segmentation", 1)
        self.outcome_publisher = self.create_publisher(GraspOutcome, "grasp_outcome", 10)
        self.create_subscription(GraspCommand, "grasp_command", self.on_command, 10)
        self.create_subscription(String, "instruction", self.on_instruction, QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.create_timer(1.0 / self.params["rate_hz"], self.publish_frame)

    def load_scene(self, params) -> None:
        spec = random_scene(params["seed"], target=params["target"], n_distractors=params["distractors"])
        sim = TabletopSim(spec, width=params["width"], height=params["height"])
        sim.settle()
        with self._sim_lock:
            if self.sim is not None:
                self.sim.close()
            self.sim = sim
        self.get_logger().info(f"scene seed {params['seed']}: {', '.join(spec.names)}")

    def apply_parameters(self, updated) -> None:
        if {"seed", "target", "distractors"} & set(updated):
            self.load_scene({**self.params, **updated})  # ValueError (unknown target) rejects the change

    def on_instruction(self, msg: String) -> None:
        try:
            self.query = parse_instruction(msg.data)
        except InstructionError as err:
            self.get_logger().error(f"instruction ignored: {err}")

    def stop(self) -> None:
        self._stop.set()
        if self._grasp_thread is not None:
            self._grasp_thread.join()

    def publish_frame(self) -> None:
        if not self._sim_lock.acquire(blocking=False):
            return   # a grasp is executing: the camera pauses, as it always did
        try:
            self._publish_frame()
        finally:
            self._sim_lock.release()

    def _publish_frame(self) -> None:
        frame = self.sim.render()
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.params["camera_frame"])
        self.image_publisher.publish(numpy_to_image(frame.rgb, "rgb8", header))
        self.depth_publisher.publish(numpy_to_image(frame.depth, "32FC1", header))
        self.info_publisher.publish(camera_info_msg(header, self.sim.intrinsics()))
        everything, all_masks = self.sim.ground_truth_all(frame)
        self.segmentation_publisher.publish(masks_to_msg(header, detections_to_msg(header, everything), everything,
                                                         all_masks, SOURCE))
        self.objects_publisher.publish(self._ground_truth_poses(header))
        if not self.params["ground_truth_masks"]:
            return
        if self.params["masks_scope"] == "all_objects":
            detections, masks = class_agnostic(everything), all_masks
            instruction = self.query.instruction if self.query is not None else ""
        elif self.query is not None:
            detections, masks = ground_truth_perception(self.sim, frame, self.query.phrases)
            instruction = self.query.instruction
        else:
            return
        self.masks_publisher.publish(masks_to_msg(header, detections_to_msg(header, detections, instruction),
                                                  detections, masks, SOURCE))

    def _ground_truth_poses(self, camera_header: Header) -> DetectionArray:
        """Every object's true pose in base_frame; size = its upright bounding cylinder's box."""
        header = Header(stamp=camera_header.stamp, frame_id=self.params["base_frame"])
        detections = []
        for i, (name, pose) in enumerate(self.sim.object_poses().items()):
            kind = self.sim.spec.get(name).kind
            across = 2 * kind.footprint_radius
            detections.append(Detection(header=header, id=str(i), class_id=name, score=1.0, has_pose=True,
                                        pose=pose_msg(pose.translation, pose.rotation),
                                        size=Vector3(x=across, y=across, z=kind.height)))
        return DetectionArray(header=header, detections=detections)

    def on_command(self, msg: GraspCommand) -> None:
        if msg.command == GraspCommand.STOP:
            self.on_stop(msg)
            return
        outcome = GraspOutcome(header=msg.header, dry_run=msg.dry_run)
        if msg.dry_run:
            outcome.reason = "dry run: not executed"
        elif msg.command != GraspCommand.GRASP:
            outcome.reason = "the simulator executes GRASP and STOP commands only"
        elif msg.header.frame_id != self.params["base_frame"]:
            outcome.reason = f"grasp in {msg.header.frame_id!r}; the simulator takes {self.params['base_frame']!r}"
        else:
            try:
                grasp = grasp_from_msg(msg)
            except ValueError as err:
                outcome.reason = f"invalid command: {err}"
                self.report(str(err), "grasp command refused")
            else:
                if self._grasp_thread is not None and self._grasp_thread.is_alive():
                    outcome.reason = "busy: another grasp is executing"
                else:
                    # cleared here, on the thread on_stop runs on: a STOP handled before the grasp thread
                    # gets the simulator stops this grasp (cleared in the grasp thread, it was lost)
                    self._stop.clear()
                    self._grasp_thread = threading.Thread(target=self.execute, args=(grasp, msg, outcome))
                    self._grasp_thread.start()
                    return
        self.outcome_publisher.publish(outcome)

    def on_stop(self, msg: GraspCommand) -> None:
        """Stop the grasp in progress (it reports `cancelled`, gripper opened where it stopped); the STOP
        itself is answered at once."""
        running = self._grasp_thread is not None and self._grasp_thread.is_alive()
        self._stop.set()
        reason = "stopped: the grasp in progress was stopped" if running else "stopped: nothing was moving"
        self.get_logger().warning(f"STOP received: {reason}")
        self.outcome_publisher.publish(GraspOutcome(header=msg.header, dry_run=msg.dry_run, reason=reason))

    def execute(self, grasp, msg: GraspCommand, outcome: GraspOutcome) -> None:
        """In the grasp thread: execute, then answer on grasp_outcome."""
        factor = self.params["real_time_factor"]
        with self._sim_lock:
            began = time.monotonic()

            def step_hook(sim_s: float) -> None:
                if self._stop.is_set():
                    raise ExecutionStopped("a STOP command arrived; stopped and opened the gripper")
                if factor > 0 and (ahead := sim_s / factor - (time.monotonic() - began)) > 0.005:
                    time.sleep(ahead)

            result = self.sim.execute(grasp, lift_m=self.params["lift_m"], step_hook=step_hook)
        outcome.success, outcome.reason = result.success and result.matches_phrase, result.reason
        outcome.lifted_object = result.lifted_object or ""
        if result.success and not result.matches_phrase:
            outcome.reason = f"lifted the {result.lifted_object}, which is not a {msg.object_class}"
        outcome.lifted_m = float(max(result.lifted_m.values(), default=0.0) if not result.lifted_object
                                 else result.lifted_m[result.lifted_object])
        self.get_logger().info(f"grasp at {np.round(grasp.position, 3).tolist()}: "
                               f"{'lifted ' + outcome.lifted_object if outcome.success else outcome.reason}")
        self.outcome_publisher.publish(outcome)


def main(args=None) -> int:
    return run_node(SimNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
