"""vision_msgs outputs over DDS, beside the package's own messages: Detection2DArray from the detector and the
segmenter (tiny models, a published photo), Detection3DArray from the localiser (the simulated pick graph),
latched LabelInfo / VisionInfo reaching a subscriber that joins late, a new label set on a new instruction; and
a node on a site without vision_msgs says so once and publishes its own messages as always."""
from __future__ import annotations

import os
import subprocess
import time

import pytest
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from skimage import data
from std_msgs.msg import Header, String

from dino_vla.config import config_dir, default_config_path
from dino_vla.graph import DETECTOR, LOCALISER, SEGMENTER, SIM, CameraTopics
from dino_vla.msg import DetectionArray, SegmentationMasks
from dino_vla.ros.conversions import numpy_to_image
from dino_vla.ros.launcher import start_graph
from dino_vla.ros.vision_outputs import LATCHED
from support.ros import set_parameter, spin_until

vision = pytest.importorskip("vision_msgs.msg", reason="vision_msgs not installed (make setup installs it)")
IMAGE_TOPIC = "/vision_camera/image"


class Listener:
    def __init__(self, name: str):
        self.node = rclpy.create_node(name)
        self.got: dict[str, list] = {}

    def listen(self, topic: str, kind, qos=10) -> list:
        self.got[topic] = []
        self.node.create_subscription(kind, topic, self.got[topic].append, qos)
        return self.got[topic]

    def until(self, predicate, timeout_s: float) -> bool:
        return spin_until(self.node, predicate, timeout_s)


@pytest.fixture(scope="module")
def perception(dds_env, tiny_models, tmp_path_factory):
    log = open(tmp_path_factory.mktemp("vision") / "nodes.log", "w+")
    running = start_graph([default_config_path()], dict(dds_env, OMP_NUM_THREADS="1"),
                          camera=CameraTopics(image=IMAGE_TOPIC), instruction="pick up the cup", device="cpu",
                          specs=(DETECTOR, SEGMENTER),
                          models={"detector": tiny_models.detector, "segmenter": tiny_models.segmenter},
                          node_params={"detector": {"box_threshold": 0.0, "text_threshold": 0.0}},
                          stdout=log, stderr=subprocess.STDOUT)
    listener = Listener("vision_listener")
    yield running, listener, log
    listener.node.destroy_node()
    running.stop()
    log.close()


def _stream_until(listener: Listener, camera, done, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    stamp = 0
    while time.monotonic() < deadline:
        stamp += 1
        header = Header(frame_id="camera_color_optical_frame")
        header.stamp.sec = 2000 + stamp
        camera.publish(numpy_to_image(data.coffee(), "rgb8", header))
        if listener.until(done, 0.3):
            return True
    return done()


def test_detections_and_masks_as_detection2d_arrays_mirror_the_own_messages(perception):
    _, listener, _ = perception
    own = listener.listen("/detections", DetectionArray)
    own_masks = listener.listen("/masks", SegmentationMasks)
    boxes = listener.listen("/vision/detections", vision.Detection2DArray)
    masked = listener.listen("/vision/masks", vision.Detection2DArray)
    camera = listener.node.create_publisher(Image, IMAGE_TOPIC, qos_profile_sensor_data)

    def paired() -> bool:
        stamps = {(m.header.stamp.sec) for m in own if m.detections} & {m.header.stamp.sec for m in boxes}
        return bool(stamps) and bool({m.header.stamp.sec for m in own_masks} & {m.header.stamp.sec for m in masked})

    assert _stream_until(listener, camera, paired), {k: len(v) for k, v in listener.got.items()}
    mine = next(m for m in own if m.detections and any(b.header == m.header for b in boxes))
    theirs = next(b for b in boxes if b.header == mine.header)
    assert theirs.header.frame_id == "camera_color_optical_frame" and len(theirs.detections) == len(mine.detections)
    for d, v in zip(mine.detections, theirs.detections):
        assert v.id == d.id and v.results[0].hypothesis.class_id == d.class_id == "cup"
        assert v.results[0].hypothesis.score == pytest.approx(d.score)
        assert (v.bbox.center.position.x, v.bbox.center.position.y, v.bbox.size_x, v.bbox.size_y) == pytest.approx(
            (d.center_x, d.center_y, d.size_x, d.size_y))
    mask_msg = next(m for m in own_masks if any(v.header == m.header for v in masked))
    assert len(next(v for v in masked if v.header == mask_msg.header).detections) == len(mask_msg.detections)


def test_label_and_vision_info_are_latched_and_follow_the_instruction(perception):
    _, _, _ = perception
    late = Listener("vision_late_joiner")   # joins after the detector published its labels
    labels = late.listen("/detector/label_info", vision.LabelInfo, LATCHED)
    info = late.listen("/detector/vision_info", vision.VisionInfo, LATCHED)
    try:
        assert late.until(lambda: labels and info, 20), "no latched label_info / vision_info"
        assert [c.class_name for c in labels[-1].class_map] == ["cup"] and labels[-1].class_map[0].class_id == 0
        assert labels[-1].threshold == pytest.approx(0.0)
        assert info[-1].method.startswith("Grounding DINO ") and info[-1].database_location == "/detector/label_info"
        version = info[-1].database_version
        set_parameter(late.node, late.until, "detector", "instruction", "grab the red mug next to the laptop")
        camera = late.node.create_publisher(Image, IMAGE_TOPIC, qos_profile_sensor_data)
        assert _stream_until(late, camera, lambda: [c.class_name for c in labels[-1].class_map] == ["red mug", "laptop"]
                             and info[-1].database_version == version + 1), (labels[-1], info[-1])
    finally:
        late.node.destroy_node()


def test_localiser_publishes_detection3d_arrays(dds_env, tmp_path):
    with open(tmp_path / "nodes.log", "w+") as log:
        running = start_graph([str(config_dir() / n) for n in ("perception.yaml", "pick.yaml", "sim.yaml")],
                              dict(dds_env, MUJOCO_GL="egl"), specs=(SIM, LOCALISER),
                              node_params={"sim": {"seed": 3}}, stdout=log, stderr=subprocess.STDOUT)
        listener = Listener("vision_3d_listener")
        try:
            own = listener.listen("/objects", DetectionArray)
            boxes = listener.listen("/vision/objects", vision.Detection3DArray)
            labels = listener.listen("/localiser/label_info", vision.LabelInfo, LATCHED)
            # what the pick node does for a goal: the sim's ground-truth masks follow the instruction topic
            instruction = listener.node.create_publisher(String, "/instruction", LATCHED)
            instruction.publish(String(data="pick up the cup"))

            def paired():
                return any(o.detections and any(b.header == o.header for b in boxes) for o in own)

            assert listener.until(paired, 90), log.seek(0) or log.read()[-3000:]
            mine = next(o for o in own if o.detections and any(b.header == o.header for b in boxes))
            theirs = next(b for b in boxes if b.header == mine.header)
            assert theirs.header.frame_id == "base_link"
            for d, v in zip(mine.detections, theirs.detections, strict=True):
                assert v.results[0].hypothesis.class_id == d.class_id == "cup"
                assert v.bbox.center == d.pose and v.bbox.size == d.size and v.results[0].pose.pose == d.pose
            assert listener.until(lambda: labels, 10) and [c.class_name for c in labels[-1].class_map] == ["cup"]
        finally:
            listener.node.destroy_node()
            running.stop()


def test_without_vision_msgs_a_node_says_so_once_and_runs(dds_env, tiny_models, tmp_path):
    """A site without vision_msgs: the import fails (a vision_msgs package that raises ImportError first on the
    path), the detector logs one warning and still answers on `detections`."""
    blocker = tmp_path / "site" / "vision_msgs"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('vision_msgs is not installed on this site')\n")
    with open(tmp_path / "nodes.log", "w+") as log:
        path = os.pathsep.join(p for p in (str(tmp_path / "site"), os.environ.get("PYTHONPATH")) if p)
        running = start_graph([default_config_path()], dict(dds_env, OMP_NUM_THREADS="1", PYTHONPATH=path),
                              camera=CameraTopics(image="/novision/image"), namespace="novision",
                              instruction="pick up the cup", device="cpu", specs=(DETECTOR,),
                              models={"detector": tiny_models.detector}, stdout=log, stderr=subprocess.STDOUT)
        listener = Listener("novision_listener")
        try:
            own = listener.listen("/novision/detections", DetectionArray)
            camera = listener.node.create_publisher(Image, "/novision/image", qos_profile_sensor_data)
            assert _stream_until(listener, camera, lambda: own), "no detections without vision_msgs"
            assert listener.node.count_publishers("/novision/vision/detections") == 0
            log.seek(0)
            text = log.read()
            assert text.count("vision_msgs cannot be imported here") == 1 and "Traceback" not in text, text[-3000:]
        finally:
            listener.node.destroy_node()
            running.stop()
