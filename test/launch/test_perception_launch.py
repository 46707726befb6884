"""`ros2 launch dino_vla perception.launch.py` for real (loopback DDS, a free domain) with the tiny
random-weight models: images published on its camera topic come back as detections and masks, and SIGINT ends
it with every process exiting 0 within 10 s, also when it was started with SIGINT ignored."""
from __future__ import annotations

import time

import pytest
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from dino_vla.msg import DetectionArray, SegmentationMasks
from dino_vla.ros.conversions import numpy_to_image
from support.ros2_launch import SIGINT_DISPOSITIONS, Launch, stop_with_sigint


@pytest.mark.parametrize("sigint", SIGINT_DISPOSITIONS)
def test_perception_launch_detects_and_stops_on_sigint(launch_env, tiny_models, odd_image, tmp_path, sigint):
    launch = Launch("perception.launch.py", ["instruction:=pick up the cup",
                                             f"features_model:={tiny_models.features}",
                                             f"detector_model:={tiny_models.detector}",
                                             f"segmenter_model:={tiny_models.segmenter}"],
                    launch_env, tmp_path / "launch.log", sigint_ignored=sigint == "ignored")
    try:
        node = rclpy.create_node(f"launch_test_camera_{sigint}")
        try:
            detections, masks = [], []
            node.create_subscription(DetectionArray, "/detections", detections.append, 10)
            node.create_subscription(SegmentationMasks, "/masks", masks.append, 10)
            camera = node.create_publisher(Image, "/camera/color/image_raw", qos_profile_sensor_data)
            deadline = time.monotonic() + 120
            while not (detections and masks) and time.monotonic() < deadline and launch.process.poll() is None:
                camera.publish(numpy_to_image(odd_image, "rgb8", Header(stamp=node.get_clock().now().to_msg())))
                rclpy.spin_once(node, timeout_sec=0.5)
        finally:
            node.destroy_node()
        assert detections and masks, f"no detections and masks from the launched graph:\n{launch.tail()}"
        assert detections[0].instruction == masks[0].instruction == "pick up the cup"
        assert (masks[0].labels.height, masks[0].labels.width) == odd_image.shape[:2]
        stop_with_sigint(launch, sigint)
    finally:
        launch.kill()
