"""features node: camera image -> DINOv2 CLS + patch tokens (dino_vla/DinoFeatures on `features`)."""
from __future__ import annotations

from sensor_msgs.msg import Image

from dino_vla.msg import DinoFeatures
from dino_vla.pipeline.annotate import features_to_rgb
from dino_vla.ros.messages import features_to_msg
from dino_vla.ros.node_base import run_node
from dino_vla.ros.perception_node import PerceptionNode


class FeaturesNode(PerceptionNode):
    STAGE = "features"

    def configure(self) -> None:
        super().configure()
        self.publisher = self.output(DinoFeatures, "features", 10)

    def activate(self) -> None:
        self.input_subscription(Image, "image", self.on_image, self.camera_qos)

    def on_image(self, msg: Image) -> None:
        rgb = self.to_rgb(msg)
        if rgb is None:
            return
        features = self.pipeline.extract_features(rgb)
        self.publisher.publish(features_to_msg(msg.header, features))
        self.frames_processed += 1
        self.publish_debug(msg.header, lambda: features_to_rgb(features, rgb.shape[:2]))


def main(args=None) -> int:
    return run_node(FeaturesNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
