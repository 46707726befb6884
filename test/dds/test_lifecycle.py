"""The model nodes and the policy are managed (lifecycle) nodes: stepped through their states over DDS the way
`ros2 lifecycle set` does (dino_vla.ros.lifecycle_client), by a test node that watches what they subscribe
and publish in each state."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from skimage import data
from std_msgs.msg import Header, String

from dino_vla.config import config_dir, default_config_path
from dino_vla.graph import DETECTOR, POLICY, CameraTopics, NodeSpec, ros_arguments
from dino_vla.msg import DetectionArray
from dino_vla.ros.conversions import numpy_to_image
from dino_vla.ros.lifecycle_client import LifecycleClient, LifecycleError

IMAGE_TOPIC = "/lifecycle_camera/image"


def start(spec: NodeSpec, env: dict, log, files: list[str], **overrides) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", spec.module,
                             *ros_arguments(spec, files, CameraTopics(image=IMAGE_TOPIC),
                                            overrides={"autostart": False, **overrides})],
                            env={**os.environ, **env, "OMP_NUM_THREADS": "1"}, stdout=log, stderr=subprocess.STDOUT)


class Manager:
    """The test's node: a lifecycle client of one node, a camera, and what comes out."""

    def __init__(self, target: str, process: subprocess.Popen):
        self.node = rclpy.create_node(f"lifecycle_test_{target}")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.client = LifecycleClient(self.node, self.executor, f"/{target}")
        self.process = process
        self.camera = self.node.create_publisher(Image, IMAGE_TOPIC, qos_profile_sensor_data)
        self.detections: list[DetectionArray] = []
        self.statuses: list[str] = []
        self.node.create_subscription(DetectionArray, "/detections", self.detections.append, 10)
        self.node.create_subscription(String, "/policy/status", lambda m: self.statuses.append(m.data), 10)
        self.frame = numpy_to_image(data.coffee()[::4, ::4].copy(), "rgb8", Header(frame_id="camera"))

    def alive(self) -> str | None:
        return None if self.process.poll() is None else f"exited with code {self.process.returncode}"

    def change(self, transition: str, timeout_s: float = 120.0) -> None:
        self.client.change(transition, timeout_s, self.alive)

    def state(self) -> str:
        return self.client.state(10.0, self.alive)

    def spin(self, seconds: float, until=lambda: False) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if until():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return until()

    def stream(self, seconds: float, until=lambda: False) -> bool:
        """Camera frames at 5 Hz for up to `seconds`, until `until()`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.frame.header.stamp = self.node.get_clock().now().to_msg()
            self.camera.publish(self.frame)
            if self.spin(0.2, until):
                return True
        return until()

    def close(self) -> None:
        self.client.close()
        self.executor.shutdown()
        self.node.destroy_node()


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def log(tmp_path):
    with open(tmp_path / "node.log", "w+") as f:
        yield f


def text(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()


def test_detector_through_every_state(dds_env, tiny_models, log):
    process = start(DETECTOR, dds_env, log, [str(default_config_path())], model=tiny_models.detector,
                    device="cpu", instruction="pick up the cup")
    manager = Manager("detector", process)
    try:
        assert manager.state() == "unconfigured"
        assert "model loaded" not in text(log)
        assert manager.node.count_publishers("/detections") == 0 and manager.camera.get_subscription_count() == 0

        manager.change("configure")
        assert manager.state() == "inactive" and text(log).count("model loaded") == 1
        assert manager.spin(10, lambda: manager.node.count_publishers("/detections") == 1)
        assert manager.camera.get_subscription_count() == 0
        assert not manager.stream(1.5, lambda: manager.detections), "an inactive node published"

        manager.change("activate")
        assert manager.state() == "active"
        assert manager.stream(30, lambda: manager.detections), "no detections once active"
        assert manager.detections[-1].instruction == "pick up the cup"

        manager.change("deactivate")
        assert manager.state() == "inactive"
        assert manager.spin(10, lambda: manager.camera.get_subscription_count() == 0), "still subscribed"
        manager.spin(0.5)
        manager.detections.clear()
        assert not manager.stream(1.5, lambda: manager.detections), "a deactivated node published"
        assert "inactive: inputs and outputs stopped (model stays loaded on the CPU)" in text(log)

        manager.change("activate")   # the model is still loaded: no second load
        assert manager.stream(30, lambda: manager.detections), "no detections after activating again"
        assert text(log).count("model loaded") == 1

        manager.change("deactivate")
        manager.change("cleanup")
        assert manager.state() == "unconfigured" and "cleaned up: model unloaded" in text(log)
        assert manager.spin(10, lambda: manager.node.count_publishers("/detections") == 0), "publisher left behind"

        manager.change("configure")   # loads again
        assert text(log).count("model loaded") == 2
        manager.change("shutdown")
        assert manager.state() == "finalized"
        assert process.poll() is None   # finalized, still answering until it is stopped
    finally:
        manager.close()
        stop(process)
    assert process.returncode == 0 and "Traceback" not in text(log), text(log)[-3000:]


def test_a_refused_transition_and_a_failed_configure_leave_the_node_serving(dds_env, tmp_path, log):
    process = start(DETECTOR, dds_env, log, [str(default_config_path())], model=str(tmp_path / "no-such-model"),
                    device="cpu")
    manager = Manager("detector", process)
    try:
        with pytest.raises(LifecycleError, match="activate failed"):
            manager.change("activate")   # from unconfigured: the state machine refuses it
        with pytest.raises(LifecycleError, match="configure failed"):
            manager.change("configure")
        assert manager.state() == "unconfigured" and process.poll() is None
        assert "configure failed: " in text(log) and "no-such-model" in text(log)
    finally:
        manager.close()
        stop(process)
    assert process.returncode == 0 and "Traceback" not in text(log), text(log)[-3000:]


def test_policy_publishes_only_while_active(dds_env, log):
    files = [str(config_dir() / "policy.yaml")]
    process = start(POLICY, dds_env, log, files, device="cpu", instruction="pick up the cup", rate_hz=10.0)
    manager = Manager("policy", process)
    try:
        manager.change("configure")
        assert not manager.spin(1.5, lambda: manager.statuses), "an inactive policy published"
        manager.change("activate")
        assert manager.spin(20, lambda: manager.statuses), "no status once active"
        assert manager.statuses[-1].startswith("stale: ")   # acting on the instruction parameter, no inputs
        manager.change("deactivate")
        manager.spin(0.5)
        manager.statuses.clear()
        assert not manager.spin(1.5, lambda: manager.statuses), "a deactivated policy published"
        manager.change("activate")
        assert manager.spin(20, lambda: manager.statuses), "no status after activating again"
    finally:
        manager.close()
        stop(process)
    assert process.returncode == 0 and "Traceback" not in text(log), text(log)[-3000:]
