"""Detect, then track in the two-process graph over DDS: the real detector and segmenter nodes (tiny models) with
`tracking` on, fed a static simulated scene one frame at a time. Between detections every DetectionArray and its
SegmentationMasks say `tracked` with a growing age, a detection comes every redetect_every frames, the tracked
masks are the detection's, and turning tracking off at run time brings back a detection per frame."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from dino_vla.config import default_config_path
from dino_vla.graph import DETECTOR, SEGMENTER, CameraTopics
from dino_vla.msg import DetectionArray, SegmentationMasks
from dino_vla.ros.conversions import image_to_numpy, numpy_to_image
from dino_vla.ros.launcher import start_graph
from dino_vla.ros.messages import stamp_ns
from dino_vla.types import DETECTED, TRACKED
from support.ros import set_parameter, spin_until
from support.sim_frames import settled_frame

IMAGE_TOPIC = "/tracking_camera/image"
REDETECT_EVERY = 4


@pytest.fixture(scope="module")
def graph(dds_env, tiny_models, tmp_path_factory):
    log = open(tmp_path_factory.mktemp("tracking") / "nodes.log", "w+")
    tracking = {"tracking": True, "redetect_every": REDETECT_EVERY}
    running = start_graph([default_config_path()], dict(dds_env, OMP_NUM_THREADS="1"),
                          camera=CameraTopics(image=IMAGE_TOPIC), instruction="pick up the cup", device="cpu",
                          specs=(DETECTOR, SEGMENTER),
                          models={"detector": tiny_models.detector, "segmenter": tiny_models.segmenter},
                          node_params={"detector": {**tracking, "box_threshold": 0.0, "text_threshold": 0.0},
                                       "segmenter": tracking},
                          stdout=log, stderr=subprocess.STDOUT)
    node = rclpy.create_node("tracking_probe")
    camera = node.create_publisher(Image, IMAGE_TOPIC, qos_profile_sensor_data)
    received = {"detections": [], "masks": []}
    node.create_subscription(DetectionArray, "/detections", received["detections"].append, 50)
    node.create_subscription(SegmentationMasks, "/masks", received["masks"].append, 50)
    rgb = settled_frame(1, tmp_path_factory.mktemp("sim")).frame.rgb
    yield running, node, camera, received, rgb, log
    node.destroy_node()
    running.stop()
    log.close()


def feed(node, camera, received, rgb, frames: int, first_sec: int) -> list[Header]:
    """`frames` frames a second apart (stamps), each sent again until its masks come back (best-effort frames
    just after discovery may be lost, as on a robot); their headers."""
    answered = []
    for k in range(frames):
        header = Header(frame_id="camera_color_optical_frame")
        header.stamp.sec = first_sec + k
        for _ in range(10):
            camera.publish(numpy_to_image(rgb, "rgb8", header))
            if spin_until(node, lambda: any(m.header == header for m in received["masks"]), 3.0):
                answered.append(header)
                break
        else:
            raise AssertionError(f"frame {k} never answered on /masks")
    return answered


def test_tracked_between_detections_with_growing_age(graph):
    running, node, camera, received, rgb, log = graph
    feed(node, camera, received, rgb, 3 * REDETECT_EVERY + 1, 1000)
    assert running.failed() is None
    # every frame the detector processed (a frame sent again after a loss is one more), in order
    detections = received["detections"]
    since = [d.frames_since_detection for d in detections]
    assert len(since) > 3 * REDETECT_EVERY
    assert since == [k % REDETECT_EVERY for k in range(len(since))]
    assert [d.provenance for d in detections] == [DETECTED if s == 0 else TRACKED for s in since]
    for d in detections:
        detected_ns = d.detection_stamp.sec * 10**9 + d.detection_stamp.nanosec
        assert d.detection_age_s == pytest.approx((stamp_ns(d.header) - detected_ns) / 1e9)
        assert d.tracking_confidence == 1.0     # a static scene loses nothing
        assert d.detections
    assert {d.detection_age_s for d in detections if d.provenance == TRACKED} >= {1.0, 2.0, 3.0}
    keyframe_labels = None
    for m in received["masks"]:
        assert any((m.provenance, m.frames_since_detection, m.detection_stamp, m.detection_age_s, m.detections) ==
                   (d.provenance, d.frames_since_detection, d.detection_stamp, d.detection_age_s, d.detections)
                   for d in detections if d.header == m.header)
        labels = image_to_numpy(m.labels)
        if m.provenance == DETECTED:
            keyframe_labels = labels
        elif keyframe_labels is not None:   # a static scene: the detection's masks, unchanged
            np.testing.assert_array_equal(labels, keyframe_labels)
    assert sum(m.provenance == TRACKED for m in received["masks"]) >= 2 * (REDETECT_EVERY - 1)
    log.flush()


def test_tracking_off_at_run_time_detects_every_frame(graph):
    running, node, camera, received, rgb, _ = graph
    set_parameter(node, lambda p, t: spin_until(node, p, t), "detector", "tracking", False)
    try:
        headers = feed(node, camera, received, rgb, 3, 2000)
        for h in headers:
            d = next(m for m in received["detections"] if m.header == h)
            m = next(m for m in received["masks"] if m.header == h)
            assert (d.provenance, d.frames_since_detection, d.detection_stamp) == (DETECTED, 0, h.stamp)
            assert m.provenance == DETECTED
    finally:
        set_parameter(node, lambda p, t: spin_until(node, p, t), "detector", "tracking", True)
    headers = feed(node, camera, received, rgb, 2, 3000)
    provenance = [next(m for m in received["detections"] if m.header == h).provenance for h in headers]
    assert provenance == [DETECTED, TRACKED]
    assert running.failed() is None
