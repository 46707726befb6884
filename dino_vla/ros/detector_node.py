"""detector node: camera image + instruction -> Grounding DINO boxes (dino_vla/DetectionArray on
`detections`). The instruction changes at run time on the `instruction` topic or parameter. With
masks_scope all_objects the boxes are of every object (prompt `object`), whatever the instruction names.
With tracking on, Grounding DINO runs on some frames only and the boxes are tracked in between
(pipeline/tracking.py); every DetectionArray says which, and how old its detection is."""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from dino_vla.config import ConfigError
from dino_vla.instruction import GroundingQuery, InstructionError, parse_instruction
from dino_vla.msg import DetectionArray
from dino_vla.pipeline.annotate import annotate
from dino_vla.ros.messages import detections_to_msg, stamp_ns
from dino_vla.ros.node_base import run_node
from dino_vla.ros.perception_node import PerceptionNode
from dino_vla.ros.vision_outputs import VisionOutputs

_THRESHOLDS = ("box_threshold", "text_threshold", "nms_iou", "max_detections")


class DetectorNode(PerceptionNode):
    STAGE = "detector"
    TRACKING = True

    def configure(self) -> None:
        super().configure()
        try:
            self.query = self.query_for(self.params["instruction"], self.params["masks_scope"])
        except InstructionError as err:
            raise ConfigError(f"parameter instruction: {err}") from None
        self.get_logger().info(f"looking for {self.query.prompt!r} ({self.query.instruction!r})")
        self.publisher = self.output(DetectionArray, "detections", 10)
        self.vision = VisionOutputs(self, "vision/detections", 2, f"Grounding DINO {self.params['model']}",
                                    create=self.output, threshold=self.params["box_threshold"])

    def activate(self) -> None:
        self.vision.publish_labels(Header(stamp=self.get_clock().now().to_msg()), self.query.phrases, again=True)
        self.input_subscription(Image, "image", self.on_image, self.camera_qos)
        # transient local: an instruction published before this node started (or while it was inactive)
        # still reaches it
        self.input_subscription(String, "instruction", self.on_instruction, QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))

    def query_for(self, instruction: str, scope: str | None = None) -> GroundingQuery:
        """Parsed, and checked against what this detector's text encoder can read, before it is used."""
        if (scope or self.params["masks_scope"]) == "all_objects":
            query = GroundingQuery.every_object(instruction)
        else:
            query = parse_instruction(instruction)
        self.pipeline.detector.check_phrases(query.phrases)
        return query

    def apply_parameters(self, updated) -> None:
        if self.pipeline is None:   # unconfigured: configure takes the new values
            return
        super().apply_parameters(updated)
        if "instruction" in updated or "masks_scope" in updated:
            # InstructionError rejects the change
            self.query = self.query_for(updated.get("instruction", self.query.instruction),
                                        updated.get("masks_scope"))
            self.get_logger().info(f"now looking for {self.query.prompt!r}")
        for name in _THRESHOLDS:
            if name in updated:
                setattr(self.pipeline.detector, name, updated[name])
                self.perception.reset()   # boxes found with other thresholds are not worth following
        self.vision.threshold = updated.get("box_threshold", self.vision.threshold)

    def on_instruction(self, msg: String) -> None:
        try:
            self.query = self.query_for(msg.data)
        except InstructionError as err:
            self.get_logger().error(f"instruction rejected, still looking for {self.query.prompt!r}: {err}")
            return
        self.get_logger().info(f"instruction topic: now looking for {self.query.prompt!r}")

    def on_image(self, msg: Image) -> None:
        rgb = self.to_rgb(msg)
        if rgb is None:
            return
        query = self.query
        result = self.perception.step(rgb, query, stamp_ns(msg.header))
        detections = result.detections
        out = detections_to_msg(msg.header, detections, query.instruction, result.provenance)
        self.publisher.publish(out)
        self.vision.publish(msg.header, out.detections, labels=query.phrases)
        self.frames_processed += 1
        self.publish_debug(msg.header, lambda: annotate(rgb, detections))


def main(args=None) -> int:
    return run_node(DetectorNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
