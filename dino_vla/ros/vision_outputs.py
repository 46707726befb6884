"""vision_msgs outputs beside the package's own messages, for robot stacks that subscribe to vision_msgs (4.x:
ObjectHypothesis.class_id is a string there, so an open-vocabulary phrase fits as it is).

Each publishing node (detector, segmenter, localiser) has a Detection2DArray or Detection3DArray topic and two
latched (transient local) topics of its own: `~/label_info` (LabelInfo: the phrases it currently labels with,
VisionClass.class_id = the phrase's index, class_name = the phrase) and `~/vision_info` (VisionInfo: method =
what made the detections, database_location = the label_info topic, database_version = how many label sets
there have been), both published again whenever the label set changes. Where vision_msgs cannot be imported
the node says so once and runs without these publishers."""
from __future__ import annotations

from typing import Callable, Sequence

from geometry_msgs.msg import PoseWithCovariance
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

from dino_vla.msg import Detection

try:
    from vision_msgs import msg as vision
except ImportError:   # a site without vision_msgs: the package's own messages only
    vision = None

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def detection_2d(d: Detection):
    """One of the package's detections as vision_msgs/Detection2D (box centre and size in pixels)."""
    box = vision.BoundingBox2D(center=vision.Pose2D(position=vision.Point2D(x=d.center_x, y=d.center_y)),
                               size_x=d.size_x, size_y=d.size_y)
    return vision.Detection2D(header=d.header, results=[_hypothesis(d)], bbox=box, id=d.id)


def detection_3d(d: Detection):
    """A located detection (has_pose) as vision_msgs/Detection3D: the oriented box, and the same pose in the
    hypothesis."""
    return vision.Detection3D(header=d.header, results=[_hypothesis(d)], id=d.id,
                              bbox=vision.BoundingBox3D(center=d.pose, size=d.size))


def _hypothesis(d: Detection):
    return vision.ObjectHypothesisWithPose(hypothesis=vision.ObjectHypothesis(class_id=d.class_id, score=d.score),
                                           pose=PoseWithCovariance(pose=d.pose))


def label_info(header: Header, labels: Sequence[str], threshold: float = 0.0):
    return vision.LabelInfo(header=header, threshold=float(threshold), class_map=[
        vision.VisionClass(class_id=i, class_name=label) for i, label in enumerate(labels)])


class VisionOutputs:
    """A node's vision_msgs publishers. `create(type, topic, qos)` makes a publisher (a managed node's
    lifecycle publishers, or node.create_publisher)."""

    def __init__(self, node: Node, topic: str, dimensions: int, method: str,
                 create: Callable | None = None, threshold: float = 0.0):
        self.node, self.method, self.threshold = node, method, threshold
        self.labels: tuple[str, ...] | None = None
        self.version = 0
        self._instruction = ""
        self.enabled = vision is not None
        if not self.enabled:
            node.get_logger().warning(f"vision_msgs cannot be imported here: no {topic}, ~/label_info or "
                                      "~/vision_info (the package's own messages are published as always)")
            return
        create = create or node.create_publisher
        self.dimensions = dimensions
        self.detections = create(vision.Detection2DArray if dimensions == 2 else vision.Detection3DArray, topic, 10)
        self.label_publisher = create(vision.LabelInfo, "~/label_info", LATCHED)
        self.info_publisher = create(vision.VisionInfo, "~/vision_info", LATCHED)
        self.label_topic = node.resolve_topic_name("~/label_info")

    def publish(self, header: Header, detections: Sequence[Detection], instruction: str = "",
                labels: Sequence[str] | None = None) -> None:
        """The detections as one array in header's frame. The label set is `labels`, else every class_id seen
        since the instruction last changed."""
        if not self.enabled:
            return
        if labels is None:
            known = () if self.labels is None or instruction != self._instruction else self.labels
            labels = tuple(dict.fromkeys((*known, *(d.class_id for d in detections))))
        self._instruction = instruction
        self.publish_labels(header, tuple(labels))
        convert = detection_2d if self.dimensions == 2 else detection_3d
        array = vision.Detection2DArray if self.dimensions == 2 else vision.Detection3DArray
        self.detections.publish(array(header=header, detections=[convert(d) for d in detections]))

    def publish_labels(self, header: Header, labels: tuple[str, ...], again: bool = False) -> None:
        """LabelInfo and VisionInfo, when the labels changed (or `again`: a managed node that activates)."""
        if not self.enabled or (labels == self.labels and not again):
            return
        if labels != self.labels:
            self.labels, self.version = labels, self.version + 1
        self.label_publisher.publish(label_info(header, labels, self.threshold))
        self.info_publisher.publish(vision.VisionInfo(header=header, method=self.method,
                                                      database_location=self.label_topic,
                                                      database_version=self.version))
