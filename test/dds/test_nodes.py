"""The perception nodes as separate processes over real DDS (loopback profile), started from the same
graph description as `dino-vla launch` and launch/pick.launch.py."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from skimage import data
from std_msgs.msg import Header, String

from dino_vla.config import config_dir, default_config_path
from dino_vla.dds import udp_sockets
from dino_vla.msg import DetectionArray, DinoFeatures, SegmentationMasks
from dino_vla.ros.conversions import image_to_numpy, numpy_to_image
from dino_vla.graph import CameraTopics
from dino_vla.instruction import OBJECT
from dino_vla.ros.launcher import start_graph
from support.ros import set_parameter, spin_until

IMAGE_TOPIC = "/test_camera/image"
COFFEE = data.coffee()


class Probe:
    """A node of the test: publishes camera frames and instructions, records every output."""

    def __init__(self):
        self.node = rclpy.create_node("probe")
        self.images = self.node.create_publisher(Image, IMAGE_TOPIC, qos_profile_sensor_data)
        self.instructions = self.node.create_publisher(String, "/instruction", QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.received = {"features": [], "detections": [], "masks": []}
        for topic, kind in (("/features", DinoFeatures), ("/detections", DetectionArray),
                            ("/masks", SegmentationMasks)):
            self.node.create_subscription(kind, topic, self.received[topic[1:]].append, 50)
        self.stamp = 0

    def publish(self, image: np.ndarray | None = None, encoding="rgb8", msg: Image | None = None) -> Header:
        self.stamp += 1
        header = Header(frame_id="camera_color_optical_frame")
        header.stamp.sec, header.stamp.nanosec = 1000 + self.stamp, 123
        if msg is None:
            msg = numpy_to_image(COFFEE if image is None else image, encoding, header)
        else:
            msg.header = header
        self.images.publish(msg)
        return header

    def spin_until(self, predicate, timeout_s: float) -> bool:
        return spin_until(self.node, predicate, timeout_s)

    def stream_until_answered(self, outputs: tuple[str, ...], timeout_s: float = 30.0) -> Header:
        """Publish a frame every 0.3 s, like a camera, until one frame is answered on every output:
        best-effort frames just after discovery may be lost, as on a robot."""
        deadline = time.monotonic() + timeout_s
        sent = []
        while time.monotonic() < deadline:
            sent.append(self.publish())
            self.spin_until(lambda: False, 0.3)
            for header in sent:
                if all(any(m.header == header for m in self.received[o]) for o in outputs):
                    return header
        counts = {o: len(self.received[o]) for o in outputs}
        raise AssertionError(f"no frame of {len(sent)} answered on all of {outputs} within {timeout_s} s; "
                             f"received {counts}")

    def wait_for(self, output: str, header: Header, timeout_s=20.0):
        def match():
            return next((m for m in self.received[output] if m.header == header), None)
        assert self.spin_until(lambda: match() is not None, timeout_s), \
            f"no {output} with stamp {header.stamp.sec} within {timeout_s} s"
        return match()


@pytest.fixture(scope="module")
def graph(dds_env, tiny_models, tmp_path_factory):
    log = open(tmp_path_factory.mktemp("graph") / "nodes.log", "w+")
    # one torch thread per node: three model processes on a 2-core machine would otherwise oversubscribe it
    running = start_graph([default_config_path()], dict(dds_env, OMP_NUM_THREADS="1"),
                          camera=CameraTopics(image=IMAGE_TOPIC),
                          instruction="pick up the cup", device="cpu",
                          models={"features": tiny_models.features, "detector": tiny_models.detector,
                                  "segmenter": tiny_models.segmenter},
                          stdout=log, stderr=subprocess.STDOUT)
    probe = Probe()
    ready = probe.spin_until(lambda: probe.images.get_subscription_count() >= 3
                             and probe.node.count_publishers("/masks") >= 1, 60)
    failed = running.failed()
    if not ready or failed:
        running.stop()
        log.seek(0)
        pytest.fail(f"graph did not come up (exited: {failed}):\n{log.read()[-3000:]}")
    yield running, probe, log
    probe.node.destroy_node()
    running.stop()
    log.close()


def test_outputs_carry_the_input_header(graph):
    _, probe, _ = graph
    header = probe.stream_until_answered(("features", "detections", "masks"))
    features = probe.wait_for("features", header)
    detections = probe.wait_for("detections", header)
    masks = probe.wait_for("masks", header)
    assert features.grid_rows * features.grid_cols * features.dim == len(features.patch_tokens) > 0
    assert len(features.cls) == features.dim
    assert detections.instruction == "pick up the cup"
    assert len(detections.detections) > 0
    assert all(d.class_id == "cup" and d.header == header for d in detections.detections)
    labels = image_to_numpy(masks.labels)
    assert labels.shape == COFFEE.shape[:2] and masks.labels.header == header
    assert len(masks.detections) == len(detections.detections) == len(masks.mask_scores)
    assert labels.max() <= len(masks.detections)


def test_instruction_changes_at_run_time(graph):
    _, probe, log = graph
    probe.instructions.publish(String(data="grab the red mug next to the laptop"))

    def switched():
        header = probe.publish()
        probe.spin_until(lambda: any(m.header == header for m in probe.received["detections"]), 5)
        return any(m.header == header and m.instruction.startswith("grab") for m in probe.received["detections"])

    assert any(switched() for _ in range(20)), "detector never switched instruction"
    latest = probe.received["detections"][-1]
    assert {d.class_id for d in latest.detections} <= {"red mug", "laptop"}
    probe.instructions.publish(String(data="asdf qwer"))  # rejected: the previous query stays
    time.sleep(1.0)
    header = probe.publish()
    assert probe.wait_for("detections", header).instruction == "grab the red mug next to the laptop"
    probe.instructions.publish(String(data="pick up the cup"))
    log.flush()


def test_masks_scope_all_objects_boxes_every_object_whatever_the_instruction(graph):
    """What the policy graph sets on a robot: the detector prompts `object` and labels every box so; the
    instruction still travels in the message for the policy to ground."""
    _, probe, _ = graph
    set_parameter(probe.node, probe.spin_until, "detector", "masks_scope", "all_objects")
    try:
        header = probe.stream_until_answered(("detections", "masks"))
        detections, masks = probe.wait_for("detections", header), probe.wait_for("masks", header)
        assert detections.instruction == "pick up the cup" and detections.detections
        assert {d.class_id for d in detections.detections} == {d.class_id for d in masks.detections} == {OBJECT}
    finally:
        set_parameter(probe.node, probe.spin_until, "detector", "masks_scope", "instruction")
    header = probe.stream_until_answered(("detections",))
    assert {d.class_id for d in probe.wait_for("detections", header).detections} == {"cup"}


def test_slow_model_never_builds_a_queue(graph):
    """30 frames at 200 Hz against a detector that takes tens of ms per frame: most are dropped, and
    the newest frame is the one answered (a queue would answer the oldest first)."""
    _, probe, _ = graph
    probe.spin_until(lambda: False, 1.0)  # let the instruction reset settle
    before = len(probe.received["detections"])
    headers = []
    for _ in range(30):
        headers.append(probe.publish())
        time.sleep(0.005)
    last = probe.wait_for("detections", headers[-1], timeout_s=20)
    probe.spin_until(lambda: False, 2.0)
    answered = [m.header for m in probe.received["detections"][before:] if m.header in headers]
    assert last.header == headers[-1]
    assert len(answered) < 15, f"{len(answered)} of 30 frames answered: frames are being queued"
    assert answered == sorted(answered, key=lambda h: h.stamp.sec), "answers out of order"


def test_bad_images_are_logged_and_skipped(graph):
    running, probe, log = graph
    bad_encoding = numpy_to_image(COFFEE, "rgb8")
    bad_encoding.encoding = "yuv422"
    empty = Image(height=0, width=0, encoding="rgb8", step=0)
    short = numpy_to_image(COFFEE, "rgb8")
    short.data = bytes(short.step * short.height - 100)
    for msg in (bad_encoding, empty, short):
        probe.publish(msg=msg)
        time.sleep(0.3)
    header = probe.publish()
    probe.wait_for("detections", header)  # still serving
    assert running.failed() is None
    log.flush()
    log.seek(0)
    text = log.read()
    assert "unsupported encoding 'yuv422'" in text
    assert "width=0" in text or "empty" in text
    assert "need step*height" in text


def test_dds_sockets_stay_on_loopback(graph):
    running, _, _ = graph
    pids = [os.getpid()] + [p.pid for p in running.processes.values()]
    for pid in pids:
        sockets = udp_sockets(pid)
        assert sockets, f"process {pid} has no UDP socket: is it a DDS participant?"
        assert all(addr in ("127.0.0.1", "::1") for addr, _ in sockets), f"pid {pid}: {sockets}"


def _run_node(module: str, env: dict, *ros_args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, "--ros-args", *ros_args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def test_node_refuses_a_missing_dds_profile(dds_env, tmp_path):
    env = dict(dds_env, FASTDDS_DEFAULT_PROFILES_FILE=str(tmp_path / "missing.xml"))
    result = _run_node("dino_vla.ros.detector_node", env)
    assert result.returncode == 2
    assert "missing.xml" in result.stderr and "multicast" in result.stderr


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"   # an unreaped zombie has ended
    except FileNotFoundError:
        return False


def test_nodes_stop_when_their_launcher_is_killed(dds_env, tmp_path):
    """No orphans: a launcher killed with SIGKILL (no chance to stop its graph) still takes its nodes along."""
    log = tmp_path / "nodes.log"
    script = ("import sys, time\nfrom dino_vla.graph import PICK\nfrom dino_vla.ros.launcher import start_graph\n"
              f"graph = start_graph([{str(config_dir() / 'pick.yaml')!r}], {{}}, specs=(PICK,), namespace='orphan', "
              f"stdout=open({str(log)!r}, 'w'), stderr=-2)\n"
              "print(graph.processes['pick'].pid, flush=True)\ntime.sleep(600)\n")
    launcher = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, **dds_env},
                                stdout=subprocess.PIPE, text=True)
    try:
        node = int(launcher.stdout.readline())
        deadline = time.monotonic() + 60
        while "pick action ready" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _running(node), log.read_text()
    finally:
        launcher.kill()
        launcher.wait()
    deadline = time.monotonic() + 30
    while _running(node) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(node), f"the pick node outlived its launcher:\n{log.read_text()[-2000:]}"


def test_node_without_weights_says_what_is_missing(dds_env, tmp_path):
    result = _run_node("dino_vla.ros.detector_node", dds_env, "-p", f"model:={tmp_path / 'no-such-model'}")
    assert result.returncode == 1
    assert "no-such-model" in result.stderr and "save_pretrained" in result.stderr
    assert "Traceback" not in result.stderr


def test_node_rejects_out_of_range_parameters(dds_env, tiny_models):
    result = _run_node("dino_vla.ros.detector_node", dds_env, "-p", f"model:={tiny_models.detector}",
                       "-p", "box_threshold:=1.5")
    assert result.returncode != 0
    assert "box_threshold" in result.stderr
