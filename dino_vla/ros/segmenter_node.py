"""segmenter node: detections + the image they came from -> SAM masks (dino_vla/SegmentationMasks on
`masks`). Images are kept briefly and paired with detections by exact header stamp. With tracking on,
detections the detector marked tracked get the masks of their detection moved with their boxes instead of SAM
(pipeline/tracking.py); the masks carry their detections' provenance."""
from __future__ import annotations

from collections import OrderedDict

from sensor_msgs.msg import Image

from dino_vla.msg import DetectionArray, SegmentationMasks
from dino_vla.pipeline.annotate import annotate
from dino_vla.ros.messages import detections_from_msg, masks_to_msg, provenance_from_msg
from dino_vla.ros.node_base import camera_qos, run_node
from dino_vla.ros.perception_node import PerceptionNode
from dino_vla.ros.vision_outputs import VisionOutputs


class SegmenterNode(PerceptionNode):
    STAGE = "segmenter"
    TRACKING = True

    def __init__(self):
        self.images: OrderedDict[tuple[int, int, str], Image] = OrderedDict()
        # detections whose image is still queued behind them: one executor cycle takes one message per
        # subscription, so after a long segmentation the detections of frame k can be taken before the
        # frames queued up to k are
        self.waiting: OrderedDict[tuple[int, int, str], DetectionArray] = OrderedDict()
        super().__init__()

    def configure(self) -> None:
        super().configure()
        self.publisher = self.output(SegmentationMasks, "masks", 10)
        self.vision = VisionOutputs(self, "vision/masks", 2, f"SAM {self.params['model']} (boxes from the detector)",
                                    create=self.output)

    def activate(self) -> None:
        # images only wait in a small cache (no inference in this callback), and while a segmentation runs
        # (one callback at a time) the frames that arrive must wait in the subscription's queue: with the camera
        # QoS depth 1 all but the newest were lost, and with them the detections of those frames.
        # Sensor-data best effort still applies.
        self.input_subscription(Image, "image", self.on_image,
                                camera_qos(self.params["reliability"], depth=self.params["image_cache_size"]))
        self.input_subscription(DetectionArray, "detections", self.on_detections, 1)

    def deactivate(self) -> None:
        super().deactivate()
        self.images.clear()
        self.waiting.clear()

    @staticmethod
    def _key(header) -> tuple[int, int, str]:
        return header.stamp.sec, header.stamp.nanosec, header.frame_id

    def on_image(self, msg: Image) -> None:
        key = self._key(msg.header)
        self.images[key] = msg
        while len(self.images) > self.params["image_cache_size"]:
            self.images.popitem(last=False)
        if key in self.waiting:
            self.segment(self.waiting.pop(key), msg)

    def on_detections(self, msg: DetectionArray) -> None:
        key = self._key(msg.header)
        image_msg = self.images.get(key)
        if image_msg is not None:
            self.segment(msg, image_msg)
            return
        if self.images and key[:2] < next(iter(self.images))[:2]:
            # older than every cached image: its image came and was pushed out (images arrive in order)
            self.report(f"their image left the cache of {self.params['image_cache_size']} images before they "
                        "came (raise image_cache_size to cover camera rate x detector latency)",
                        f"skipping detections stamped {key[0]}.{key[1]:09d}", "warning")
            return
        self.waiting[key] = msg
        while len(self.waiting) > self.params["image_cache_size"]:
            old = self.waiting.popitem(last=False)[1].header.stamp
            self.report("no image with their stamp came (image dropped or cache too small)",
                        f"skipping detections stamped {old.sec}.{old.nanosec:09d}", "warning")

    def segment(self, msg: DetectionArray, image_msg: Image) -> None:
        rgb = self.to_rgb(image_msg)
        if rgb is None:
            return
        try:
            detections = detections_from_msg(msg, rgb.shape[:2])
        except ValueError as err:
            self.report(str(err), f"skipping detections stamped {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}")
            return
        masks = self.perception.masks(rgb, detections, provenance_from_msg(msg))
        self.publisher.publish(masks_to_msg(msg.header, msg, detections, masks, self.params["model"]))
        self.vision.publish(msg.header, msg.detections, msg.instruction)
        self.frames_processed += 1
        self.publish_debug(msg.header, lambda: annotate(rgb, detections, masks))


def main(args=None) -> int:
    return run_node(SegmenterNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
