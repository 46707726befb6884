"""recorder node: demonstrations from a robot's ROS topics, written as a dataset (dino_vla.dataset.format)
the policy can be trained on.

Subscribes the camera (`image`, aligned `depth`, `camera_info`), `masks` (their label image and detections
become the frame's instances and object names), `instruction`, the commands sent to the executor on
`grasp_command` and its `grasp_outcome`. Image, depth, CameraInfo and masks are matched by stamp and the
last frame_history sets kept. For each GRASP command (dry-run ones only with record_dry_run), the set
stamped as the command (the perception it was planned from) is written as a frame; the episode (the
command's instruction, its grasp, the object whose footprint holds the grasp, success) follows when the
command's outcome arrives, or after outcome_timeout_s with success unknown. A clean shutdown writes the
episodes still waiting, with success unknown."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String

from dino_vla.config import ConfigError
from dino_vla.msg import GraspCommand, GraspOutcome
from dino_vla.pick import localise_detections, localiser_settings
from dino_vla.dataset.format import DatasetError, DatasetWriter, RecordedFrame
from dino_vla.dataset.recording import grasped_object
from dino_vla.ros.conversions import ImageConversionError, image_to_rgb
from dino_vla.ros.depth_inputs import CameraExtrinsic, DepthMaskInputs, MaskedDepth
from dino_vla.ros.messages import grasp_from_msg, stamp_ns
from dino_vla.ros.node_base import ConfiguredNode, camera_qos, run_node
from dino_vla.sync import ApproximateTimeSync
from dino_vla.types import Grasp

SOURCE = "recorder_node (ROS topics of a robot)"


@dataclass(frozen=True)
class PendingEpisode:
    """A command whose frame is written and whose outcome is awaited."""

    frame_index: int
    instruction: str
    grasp: Grasp
    target_object: int | None
    deadline: float            # time.monotonic() after which it is written with success unknown
    extra: dict


class RecorderNode(ConfiguredNode):
    STAGE = "recorder"

    def __init__(self):
        super().__init__()
        # destroy_node runs even when start-up fails below (rclpy destroys a context's nodes on shutdown)
        self.writer: DatasetWriter | None = None
        self.pending: dict[int, PendingEpisode] = {}
        if not self.params["output_dir"].strip():
            raise ConfigError("parameter output_dir is required: the directory to write the dataset to")
        self.extrinsic = CameraExtrinsic(self, self.params)
        try:
            self.writer = DatasetWriter(self.params["output_dir"], SOURCE, self.params["target_frame"],
                                        append=self.params["append"])
        except (DatasetError, OSError) as err:
            raise ConfigError(f"parameter output_dir: {err}") from None
        self.frames: deque[tuple[int, Image, MaskedDepth]] = deque(maxlen=self.params["frame_history"])
        self.pairing = ApproximateTimeSync(("image", "masks"), int(round(self.params["sync_slop_s"] * 1e9)),
                                           self.params["sync_queue_size"], on_notice=self.report_sync)
        self.instruction = ""
        self.inputs = DepthMaskInputs(self, self.params, lambda m: self._pair("masks", stamp_ns(m.header), m))
        self.create_subscription(Image, "image", lambda msg: self._pair("image", stamp_ns(msg.header), msg),
                                 camera_qos(self.params["reliability"], depth=5))
        self.create_subscription(String, "instruction", self.on_instruction, QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.create_subscription(GraspCommand, "grasp_command", self.on_command, 10)
        self.create_subscription(GraspOutcome, "grasp_outcome", self.on_outcome, 10)
        self.create_timer(0.2, self.expire)
        self.get_logger().info(f"recording to {self.params['output_dir']!r} ({self.writer.info['episodes']} "
                               f"episode(s) there), grasps in {self.params['target_frame']!r}")

    def _pair(self, stream: str, stamp: int, item) -> None:
        for matched_stamp, pair in self.pairing.add(stream, stamp, item):
            self.frames.append((matched_stamp, pair["image"], pair["masks"]))

    def on_instruction(self, msg: String) -> None:
        self.instruction = msg.data

    def on_command(self, msg: GraspCommand) -> None:
        key = stamp_ns(msg.header)
        if msg.command != GraspCommand.GRASP or key in self.pending:
            return
        if msg.dry_run and not self.params["record_dry_run"]:
            self.get_logger().info("not recording dry-run commands (record_dry_run is false)",
                                   throttle_duration_sec=30.0)
            return
        instruction = msg.instruction or self.instruction
        slop = int(round(self.params["sync_slop_s"] * 1e9))
        matches = [(abs(stamp - key), image, m) for stamp, image, m in self.frames if abs(stamp - key) <= slop]
        try:
            if not instruction:
                raise ValueError("no instruction: the command carries none and none came on `instruction`")
            if msg.header.frame_id != self.params["target_frame"]:
                raise ValueError(f"the grasp is in {msg.header.frame_id!r}, the dataset in "
                                 f"{self.params['target_frame']!r}")
            if not matches:
                kept = f"{self.frames[0][0] * 1e-9:.3f} .. {self.frames[-1][0] * 1e-9:.3f}" if self.frames else "none"
                raise ValueError(f"no image + depth + masks stamped as the command among those kept ({kept}); "
                                 "commands must carry the stamp of the perception they were planned from")
            _, image, m = min(matches, key=lambda match: match[0])
            camera_to_base = self.extrinsic.camera_to_target(m.frame.frame)
            grasp = grasp_from_msg(msg)
            frame = RecordedFrame(image_to_rgb(image), m.frame.metres, m.masks.label_image(),
                                  tuple(phrase or "object" for phrase in m.detections.phrases), m.frame.intrinsics,
                                  camera_to_base, key)
            target = grasped_object(localise_detections(m.frame, m.detections, m.masks, localiser_settings(self.params),
                                                        camera_to_base), grasp)
        except (ValueError, ImageConversionError) as err:   # DatasetError is a ValueError
            self.get_logger().error(f"not recording the command stamped {key * 1e-9:.3f}: {err}")
            return
        index = self.writer.add_frame(frame)
        self.pending[key] = PendingEpisode(index, instruction, grasp, target,
                                           time.monotonic() + self.params["outcome_timeout_s"],
                                           {"source": msg.source, "object_class": msg.object_class,
                                            "score": msg.score, "dry_run": msg.dry_run})

    def on_outcome(self, msg: GraspOutcome) -> None:
        episode = self.pending.pop(stamp_ns(msg.header), None)
        if episode is not None:
            # a dry run moved nothing: its success is unknown, not false
            self._write(episode, None if msg.dry_run else msg.success,
                        {"outcome": msg.reason or "success", "lifted_object": msg.lifted_object,
                         "lifted_m": msg.lifted_m})

    def expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, episode in self.pending.items() if episode.deadline <= now]:
            self._write(self.pending.pop(key), None, {"outcome": f"none within {self.params['outcome_timeout_s']:g} s"})

    def _write(self, episode: PendingEpisode, success: bool | None, outcome: dict) -> None:
        written = self.writer.add_episode(episode.frame_index, episode.instruction, episode.grasp,
                                          episode.target_object, success, {**episode.extra, **outcome})
        self.get_logger().info(f"episode {written.episode_index}: {episode.instruction!r}, object "
                               f"{episode.target_object}, success {success}")

    def destroy_node(self):
        if self.writer is not None:
            for key in list(self.pending):
                self._write(self.pending.pop(key), None, {"outcome": "recorder stopped first"})
            self.writer.close()
            self.writer = None
        return super().destroy_node()


def main(args=None) -> int:
    return run_node(RecorderNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
