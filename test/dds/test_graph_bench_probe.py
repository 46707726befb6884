"""The probe of `bench --graph` against a graph slower per frame than its first patience: real sizes on a CPU
take seconds per frame, and the warm-up once never saw its latest frame answered in time, so real-size graph
runs gave up after --warm-up-timeout. A stand-in graph here (one node answering every output of a frame some
time after taking it, the newest frame only, as the model nodes do) makes the probe itself the thing tested."""
from __future__ import annotations

import threading
import time

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image

from dino_vla.msg import DetectionArray, DinoFeatures, SegmentationMasks
from dino_vla.ros.graph_bench import CameraStreamProbe
from dino_vla.ros.node_base import camera_qos

IMAGE_TOPIC = "/probe_test_camera/image"
SECONDS_PER_FRAME = 1.5
pytestmark = pytest.mark.dds


class SlowGraph:
    def __init__(self):
        self.node = rclpy.create_node("slow_graph")
        self.outputs = [self.node.create_publisher(kind, topic, 10) for kind, topic in
                        ((DinoFeatures, "/features"), (DetectionArray, "/detections"), (SegmentationMasks, "/masks"))]
        self.node.create_subscription(Image, IMAGE_TOPIC, self.on_image, camera_qos("best_effort"))
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.running = True
        self.thread = threading.Thread(target=self.spin, daemon=True)
        self.thread.start()

    def on_image(self, msg: Image) -> None:
        time.sleep(SECONDS_PER_FRAME)   # the model's work: frames arriving meanwhile wait (depth 1: the newest)
        for publisher in self.outputs:
            out = publisher.msg_type()
            out.header = msg.header
            publisher.publish(out)

    def spin(self) -> None:
        while self.running:
            self.executor.spin_once(timeout_sec=0.1)

    def stop(self) -> None:
        self.running = False
        self.thread.join(5)
        self.node.destroy_node()


def test_warm_up_waits_for_a_graph_slower_than_its_first_patience(dds_env):
    import numpy as np

    graph = SlowGraph()
    probe = CameraStreamProbe([np.zeros((48, 64, 3), np.uint8)], IMAGE_TOPIC)
    try:
        probe.wait_for_graph(image_subscribers=1)
        took = probe.warm_up(timeout_s=30.0, patience_s=0.25)
        assert SECONDS_PER_FRAME <= took < 20.0
    finally:
        probe.close()
        graph.stop()
