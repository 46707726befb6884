"""The segmenter node pairs detections with their image by stamp whichever comes first: after a long segmentation
the detections of frame k can be taken before the images queued up to k (one message per subscription per
executor cycle), and were skipped ("no cached image") although their image was on its way."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from skimage import data
from std_msgs.msg import Header

from dino_vla.config import default_config_path
from dino_vla.graph import SEGMENTER, CameraTopics
from dino_vla.msg import DetectionArray, SegmentationMasks
from dino_vla.ros.conversions import numpy_to_image
from dino_vla.ros.launcher import start_graph
from dino_vla.ros.messages import detections_to_msg, stamp_ns
from dino_vla.types import Detections
from support.ros import spin_until

IMAGE_TOPIC = "/pairing_camera/image"
LOGS = []   # the segmenter's log file
pytestmark = pytest.mark.dds


@pytest.fixture(scope="module")
def segmenter(dds_env, tiny_models, tmp_path_factory):
    import rclpy

    log = open(tmp_path_factory.mktemp("pairing") / "nodes.log", "w+")
    running = start_graph([default_config_path()], dict(dds_env, OMP_NUM_THREADS="1"),
                          camera=CameraTopics(image=IMAGE_TOPIC), device="cpu", specs=(SEGMENTER,),
                          models={"segmenter": tiny_models.segmenter}, stdout=log, stderr=subprocess.STDOUT)
    node = rclpy.create_node("pairing_test")
    masks: list[SegmentationMasks] = []
    node.create_subscription(SegmentationMasks, "/masks", masks.append, 10)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    camera = node.create_publisher(Image, IMAGE_TOPIC, reliable)
    detections = node.create_publisher(DetectionArray, "/detections", reliable)
    assert spin_until(node, lambda: camera.get_subscription_count() > 0 and detections.get_subscription_count() > 0
                      and masks is not None, 30), "the segmenter's subscriptions were not discovered"
    LOGS.append(log)
    yield node, camera, detections, masks
    node.destroy_node()
    running.stop()
    log.close()


def _frame(sec: int):
    header = Header(frame_id="camera_color_optical_frame")
    header.stamp.sec = sec
    image = data.coffee()
    boxes = Detections(np.array([[100, 50, 400, 350]], np.float32), np.ones(1, np.float32), ("cup",),
                       image.shape[:2])
    return numpy_to_image(image, "rgb8", header), detections_to_msg(header, boxes, "pick up the cup")


@pytest.mark.parametrize("first", ["image", "detections"])
def test_masks_come_for_detections_whichever_of_them_and_their_image_arrives_first(segmenter, first):
    node, camera, detections, masks = segmenter
    image_msg, detections_msg = _frame(3000 if first == "image" else 3001)
    first_msg, second_msg = (image_msg, detections_msg) if first == "image" else (detections_msg, image_msg)
    (camera if first == "image" else detections).publish(first_msg)
    spin_until(node, lambda: False, 1.0)   # the first is taken (and, before, detections were given up) alone
    (detections if first == "image" else camera).publish(second_msg)
    stamp = stamp_ns(image_msg.header)
    assert spin_until(node, lambda: any(stamp_ns(m.header) == stamp for m in masks), 60), \
        f"no masks for the frame whose {first} came first"


def test_the_debug_image_is_drawn_for_a_subscriber_only(segmenter):
    from types import SimpleNamespace

    from dino_vla.ros.perception_node import PerceptionNode

    node, camera, detections, masks = segmenter
    debug_images: list[Image] = []
    subscription = node.create_subscription(Image, "/segmenter/debug_image", debug_images.append, 10)
    image_msg, detections_msg = _frame(3002)
    assert spin_until(node, lambda: node.count_publishers("/segmenter/debug_image") > 0, 10)
    spin_until(node, lambda: False, 1.0)   # the segmenter's publisher matches the new subscription
    camera.publish(image_msg)
    detections.publish(detections_msg)
    assert spin_until(node, lambda: any(m.header == image_msg.header for m in debug_images), 60), \
        "no debug image for a subscriber"
    node.destroy_subscription(subscription)

    drawn = []
    unwatched = SimpleNamespace(params={"publish_debug_image": True},
                                debug_publisher=SimpleNamespace(get_subscription_count=lambda: 0))
    PerceptionNode.publish_debug(unwatched, image_msg.header, lambda: drawn.append(1))
    assert drawn == [], "the debug image was drawn with nobody subscribed (it cost the segmenter most of its time)"


def test_detections_older_than_every_cached_image_are_reported_at_once(segmenter):
    """A detector slower than image_cache_size frames (real sizes on a CPU at 30 Hz): the detections' image has
    left the cache; they were kept waiting for it silently and never segmented."""
    node, camera, detections, masks = segmenter
    stale_image, stale = _frame(3100)
    for sec in range(3101, 3101 + 31):   # image_cache_size 30: 3100 and its successors are pushed out
        image_msg, _ = _frame(sec)
        camera.publish(image_msg)
        spin_until(node, lambda: False, 0.02)
    spin_until(node, lambda: False, 1.0)
    detections.publish(stale)
    log = LOGS[-1]

    def reported() -> bool:
        log.flush()
        log.seek(0)
        return "left the cache of 30 images" in log.read()
    assert spin_until(node, reported, 20), "stale detections were not reported"
