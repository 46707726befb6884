"""`ros2 launch dino_vla pick.launch.py` for real (loopback DDS, a free domain) with the tiny random-weight
models, on the camera of a sim node started beside it: it answers a Pick goal from the launched models' masks,
and SIGINT ends it with every process exiting 0 within 10 s, also when it was started with SIGINT ignored. A
model that cannot load (a failed configure) ends the whole launch at once, with the reason."""
from __future__ import annotations

import subprocess
import time

import pytest

from dino_vla.config import config_dir
from dino_vla.graph import SIM, pick_graph
from dino_vla.ros.launcher import start_graph
from dino_vla.ros.pick_client import PickClient
from support.ros2_launch import SIGINT_DISPOSITIONS, STOP_S, Launch, stop_with_sigint


@pytest.fixture(scope="module")
def robot(launch_env, tmp_path_factory):
    """The simulated robot beside pick.launch.py: the sim node's camera on the RealSense topics the launch file
    subscribes by default, and its grasp executor; no ground-truth masks (the launched models make them)."""
    log = open(tmp_path_factory.mktemp("robot") / "sim.log", "w+")
    running = start_graph([str(config_dir() / "sim.yaml")], launch_env, specs=(SIM,),
                          node_params={"sim": {"ground_truth_masks": False}}, stdout=log, stderr=subprocess.STDOUT)
    yield running
    running.stop()
    log.close()


@pytest.mark.parametrize("sigint", SIGINT_DISPOSITIONS)
def test_pick_launch_with_tiny_models_answers_a_goal_and_stops_on_sigint(launch_env, robot, tiny_models,
                                                                          tmp_path, sigint):
    launch = Launch("pick.launch.py", [f"detector_model:={tiny_models.detector}",
                                       f"segmenter_model:={tiny_models.segmenter}"],
                    launch_env, tmp_path / "launch.log", sigint_ignored=sigint == "ignored")
    try:
        client = PickClient(node_name=f"launch_test_pick_client_{sigint}")
        try:
            client.wait_for_nodes(pick_graph(simulated=False, model_perception=True), timeout_s=120, graph=robot)
            result = client.pick("pick up the cup", 60, robot).result
        finally:
            client.close()
        # random weights: whatever the answer, it must come from masks the launched models made of the sim's frames
        assert result.failure_reason != "timeout" and result.perception_source == tiny_models.segmenter, \
            f"{result.failure_reason}: {result.message}\n{launch.tail()}"
        stop_with_sigint(launch, sigint)
    finally:
        launch.kill()


def test_pick_launch_ends_when_a_model_cannot_load(launch_env, tiny_models, tmp_path):
    """The detector cannot configure (no model there): the launch stops the localiser, segmenter and pick at once
    and says why, instead of leaving them waiting for masks that never come."""
    start = time.monotonic()
    launch = Launch("pick.launch.py", [f"detector_model:={tmp_path / 'no-such-model'}",
                                       f"segmenter_model:={tiny_models.segmenter}", "instruction:=pick up the cup"],
                    launch_env, tmp_path / "launch.log")
    try:
        assert launch.wait_for(r"\[detector\]: configure failed", 120), launch.tail()
        after_failure = launch.wait(STOP_S)
        assert after_failure is not None, f"the launch went on without its detector:\n{launch.tail()}"
        text = launch.text()
        assert "detector failed to configure (its log says why); the graph cannot work without it: ending the " \
               "launch" in text
        assert "local model directory" in text and "no-such-model" in text   # the detector's own reason
        codes, nodes = launch.exit_codes(), launch.nodes()
        # detector, segmenter, localiser and pick, each stopped by the launch, cleanly
        assert len(nodes) == 4 and all(codes.get(pid) == 0 for pid in nodes), launch.tail()
        print(f"\nbad detector model: the launch ended {after_failure:.2f} s after the failed configure, "
              f"{time.monotonic() - start:.1f} s after it started")
    finally:
        launch.kill()
