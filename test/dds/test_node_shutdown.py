"""Nodes stop cleanly (exit 0, no traceback) however they are asked to: SIGINT, SIGTERM (what ros2 launch sends
a node still running 5 s after SIGINT), SIGINT inherited ignored (`ros2 launch ... &` from a script) and a
second signal during the teardown. With rclpy's own signal handlers the sim node's frame timer published on a
context those handlers had already shut down ("publisher's context is invalid", exit 1) under the middle two.
A pick waiting for perception ends at once, not at its timeout. A teardown stuck in rclpy or DDS (Fast DDS can
deadlock there) ends the node after DDS_TEARDOWN_S with every thread's stack, not at launch's SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from dino_vla.action import Pick
from dino_vla.config import config_dir
from dino_vla.graph import LOCALISER, PICK, SIM, NodeSpec, ros_arguments
from dino_vla.ros.node_base import DDS_TEARDOWN_S
from dino_vla.ros.pick_client import PickClient

ASKED = {"SIGINT": (signal.SIGINT,), "SIGTERM": (signal.SIGTERM,), "SIGINT inherited ignored": (signal.SIGINT,),
         "SIGINT then SIGTERM": (signal.SIGINT, signal.SIGTERM)}


def start(spec: NodeSpec, env: dict, tmp_path, sigint_ignored: bool = False, program: tuple[str, ...] = (),
          **overrides) -> subprocess.Popen:
    files = [str(config_dir() / name) for name in ("pick.yaml", "sim.yaml")]
    return subprocess.Popen([sys.executable, *(program or ("-m", spec.module)),
                             *ros_arguments(spec, files, overrides=overrides)],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored
                            else None)


def stopped(process: subprocess.Popen, signals: tuple[int, ...], timeout_s: float = 5.0) -> tuple[float, str]:
    """Seconds from the first signal to the exit, and the node's output; asserts exit 0 without a traceback."""
    begin = time.monotonic()
    for signum in signals:
        process.send_signal(signum)
        time.sleep(0.05)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"still running {timeout_s:g} s after {signals}:\n{output[-3000:]}")
    assert process.returncode == 0 and "Traceback" not in output, output[-3000:]
    return time.monotonic() - begin, output


@pytest.mark.parametrize("asked", ASKED)
def test_sim_node_stops_cleanly_while_publishing_frames(dds_env, tmp_path, asked):
    env = {**os.environ, **dds_env, "MUJOCO_GL": "egl"}
    process = start(SIM, env, tmp_path, sigint_ignored=asked == "SIGINT inherited ignored", rate_hz=30.0)
    node = rclpy.create_node("shutdown_test_camera")
    frames = []
    node.create_subscription(Image, "/camera/color/image_raw", frames.append, qos_profile_sensor_data)
    try:
        deadline = time.monotonic() + 60
        while len(frames) < 3 and time.monotonic() < deadline and process.poll() is None:
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        node.destroy_node()
    assert len(frames) >= 3, process.communicate(timeout=10)[0] if process.poll() is not None else "no frames"
    stopped(process, ASKED[asked])


def test_a_pick_waiting_for_perception_ends_when_the_node_stops(dds_env, tmp_path):
    process = start(PICK, {**os.environ, **dds_env}, tmp_path, perception_timeout_s=60.0)
    client = PickClient(node_name="shutdown_test_pick_client")
    stages = []
    try:
        assert client.spin_until(client.client.server_is_ready, 60), "no pick action server"
        client.client.send_goal_async(Pick.Goal(instruction="pick up the cup"),
                                      feedback_callback=lambda msg: stages.append(msg.feedback.stage))
        assert client.spin_until(lambda: "waiting_for_perception" in stages, 30), "the goal did not start"
    finally:
        client.close()
    took, output = stopped(process, (signal.SIGINT,))
    assert "cancelled: the pick node was stopped (SIGINT or SIGTERM) before the pick ended" in output
    assert took < 2.0


HANGING_TEARDOWN = """
import sys, time
from dino_vla.ros.localiser_node import LocaliserNode
from dino_vla.ros.node_base import run_node

class HangingTeardown(LocaliserNode):
    def destroy_node(self):   # as a Fast DDS deadlock deleting a reader would
        print("destroy_node: hanging", flush=True)
        time.sleep(3600)

sys.exit(run_node(HangingTeardown))
"""


def test_a_hung_dds_teardown_ends_the_node_with_its_stacks(dds_env, tmp_path):
    script = tmp_path / "hanging_teardown.py"
    script.write_text(HANGING_TEARDOWN)
    process = start(LOCALISER, {**os.environ, **dds_env}, tmp_path, program=(str(script),))
    started = []
    for line in process.stdout:   # ends if the node does
        started.append(line)
        if "localising in" in line:
            break
    assert process.poll() is None, "".join(started)
    begin = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=DDS_TEARDOWN_S + 10)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"still running {DDS_TEARDOWN_S + 10:g} s after SIGINT:\n{process.communicate()[0][-3000:]}")
    took = time.monotonic() - begin
    output = "".join(started) + output
    assert "destroy_node: hanging" in output, output[-3000:]
    assert process.returncode == 1, output[-3000:]
    assert "Timeout (0:00:" in output and "in destroy_node" in output, output[-3000:]   # faulthandler's dump
    assert DDS_TEARDOWN_S <= took < DDS_TEARDOWN_S + 5
