"""localiser node: masks + aligned depth + CameraInfo (matched by stamp) -> 3D objects in the target frame
(dino_vla/DetectionArray with poses on `objects`), the instruction target's points (PointCloud2 on
`object_cloud`) and RViz boxes (MarkerArray on `markers`). A detection source for other robot stacks."""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from dino_vla.geometry.localise import NoPointsError
from dino_vla.instruction import InstructionError, parse_instruction
from dino_vla.msg import DetectionArray
from dino_vla.pick import localise_detections, localiser_settings
from dino_vla.ros.depth_inputs import CameraExtrinsic, DepthMaskInputs, MaskedDepth
from dino_vla.ros.messages import cloud_to_msg, markers_msg, objects_to_msg, stamp_ns
from dino_vla.ros.node_base import ConfiguredNode, run_node
from dino_vla.ros.vision_outputs import VisionOutputs


class LocaliserNode(ConfiguredNode):
    STAGE = "localiser"

    def __init__(self):
        super().__init__()
        self.extrinsic = CameraExtrinsic(self, self.params)
        self.objects_publisher = self.create_publisher(DetectionArray, "objects", 10)
        self.cloud_publisher = self.create_publisher(PointCloud2, "object_cloud", 1)
        self.markers_publisher = self.create_publisher(MarkerArray, "markers", 1)
        self.vision = VisionOutputs(self, "vision/objects", 3, "dino_vla localiser: masks + aligned depth (open3d)")
        self.inputs = DepthMaskInputs(self, self.params, self.on_masked_depth)
        self.get_logger().info(f"localising in {self.params['target_frame']!r}")

    def on_masked_depth(self, m: MaskedDepth) -> None:
        try:
            camera_to_target = self.extrinsic.camera_to_target(m.frame.frame)
        except ValueError as err:
            self.report(str(err), f"skipping masks stamped {stamp_ns(m.header) * 1e-9:.3f}")
            return
        located = localise_detections(m.frame, m.detections, m.masks, localiser_settings(self.params),
                                      camera_to_target)
        objects = [(m.detection_msgs[i], obj) for i, obj in enumerate(located) if not isinstance(obj, NoPointsError)]
        for err in (obj for obj in located if isinstance(obj, NoPointsError)):
            self.report(str(err), level="warning")
        header = Header(stamp=m.header.stamp, frame_id=self.params["target_frame"])
        located_msg = objects_to_msg(header, objects, m.instruction)
        self.objects_publisher.publish(located_msg)
        self.vision.publish(header, located_msg.detections, m.instruction)
        self.markers_publisher.publish(markers_msg(header, objects))
        target = self._target_points(m.instruction, objects)
        if self.params["publish_clouds"] and target is not None:
            self.cloud_publisher.publish(cloud_to_msg(header, target))

    @staticmethod
    def _target_points(instruction: str, objects) -> np.ndarray | None:
        """Points of the best-scoring object of the instruction's target phrase."""
        try:
            target = parse_instruction(instruction).target
        except InstructionError:
            return None
        matches = [obj for d, obj in objects if d.class_id == target]
        return max(matches, key=lambda o: o.score).points if matches else None


def main(args=None) -> int:
    return run_node(LocaliserNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
