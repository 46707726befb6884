"""The policy node over real DDS with an untrained random-weight checkpoint (its choices mean nothing; what is
tested is the plumbing and the safety around it): commands bounded to the workspace and the gripper, the
watchdog on stale inputs, dry run, the once-per-instruction executor command, and the pick node taking its
grasp from the policy. Observations are a real MuJoCo frame with the tiny DINOv2's real features of it."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header, String

from dino_vla.config import config_dir
from dino_vla.dds import udp_sockets
from dino_vla.graph import FEATURES, PICK, POLICY, CameraTopics, pick_graph, pick_graph_params
from dino_vla.models.features import DinoFeatures as FeaturesModel
from dino_vla.msg import DinoFeatures, GraspCommand, GraspOutcome, SegmentationMasks
from dino_vla.policy.checkpoint import random_checkpoint, read_info
from dino_vla.policy.tokens import ViewSettings
from dino_vla.ros.conversions import numpy_to_image
from dino_vla.ros.launcher import start_graph
from dino_vla.ros.messages import camera_info_msg, detections_to_msg, features_to_msg, masks_to_msg, stamp_ns
from dino_vla.ros.pick_client import PickClient
from dino_vla.sim.scene import CAMERA_FRAME
from dino_vla.sim.stand_in import SOURCE, class_agnostic
from support.ros import set_parameter
from support.sim_frames import settled_frame

CONFIG = [str(config_dir() / name) for name in ("perception.yaml", "pick.yaml", "policy.yaml")]
# a 1 mm box far from every object: whatever the untrained policy decides lands outside it
BOX_MIN, BOX_MAX = (0.30, 0.25, 0.70), (0.301, 0.251, 0.701)
MAX_OPENING, MAX_AGE, RATE = 0.02, 0.6, 5.0


class Probe:
    """The test's node, spun in a thread: streams the observation at 5 Hz (features and masks + depth can be
    paused separately), answers grasp commands as a dry-run executor, and records the policy's outputs
    with their arrival times."""

    def __init__(self, observation: dict):
        self.node = rclpy.create_node("policy_probe")
        self.observation = observation
        self.send = {"features": True, "masks": True, "image": True}
        n = self.node
        self.features = n.create_publisher(DinoFeatures, "/features", 10)
        self.image = n.create_publisher(Image, CameraTopics().image, 5)   # reliable, as the sim: for PickClient
        self.depth = n.create_publisher(Image, CameraTopics().depth, qos_profile_sensor_data)
        self.info = n.create_publisher(CameraInfo, CameraTopics().camera_info, qos_profile_sensor_data)
        self.masks = n.create_publisher(SegmentationMasks, "/masks", 10)
        self.instructions = n.create_publisher(String, "/instruction", QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.outcomes = n.create_publisher(GraspOutcome, "/grasp_outcome", 10)
        self.received = {"grasp": [], "pose": [], "status": [], "command": []}   # (time.monotonic(), msg)
        for key, kind, topic in (("grasp", GraspCommand, "/policy/grasp"), ("pose", PoseStamped, "/policy/grasp_pose"),
                                 ("status", String, "/policy/status"), ("command", GraspCommand, "/grasp_command")):
            n.create_subscription(kind, topic, lambda msg, key=key: self.received[key].append((time.monotonic(), msg)),
                                  50)
        n.create_subscription(GraspCommand, "/grasp_command", self.answer, 10)
        self.stamps: list[int] = []
        n.create_timer(1.0 / 5, self.publish)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(n)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def publish(self) -> None:
        header = Header(stamp=self.node.get_clock().now().to_msg(), frame_id=CAMERA_FRAME)
        o = self.observation
        if self.send["features"]:
            self.features.publish(features_to_msg(header, o["features"]))
        if self.send["image"]:
            self.image.publish(numpy_to_image(o["rgb"], "rgb8", header))
        if self.send["masks"]:
            self.depth.publish(numpy_to_image(o["depth"], "32FC1", header))
            self.info.publish(camera_info_msg(header, o["intrinsics"]))
            self.masks.publish(masks_to_msg(header, detections_to_msg(header, o["detections"]), o["detections"],
                                            o["masks"], SOURCE))
        self.stamps.append(stamp_ns(header))

    def answer(self, msg: GraspCommand) -> None:
        self.outcomes.publish(GraspOutcome(header=msg.header, dry_run=msg.dry_run, reason="dry run: not executed"))

    def since(self, key: str, t: float) -> list:
        return [msg for at, msg in self.received[key] if at > t]

    def wait(self, predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def set_parameter(self, node: str, name: str, value: bool) -> None:
        set_parameter(self.node, self.wait, node, name, value)

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(10)   # a timer callback still running would publish through a destroyed node
        self.node.destroy_node()


@pytest.fixture(scope="module", params=["mask", "crop"])
def checkpoint(request, tiny_models, tmp_path_factory) -> str:
    """Both kinds of object feature: a crop-feature policy also pairs the masks with the image they came from
    (the probe sends it with the masks' stamp), and its node runs the backbone on each object's crop."""
    return random_checkpoint(tmp_path_factory.mktemp("policy") / "checkpoint", tiny_models.features,
                             view=ViewSettings(object_features=request.param))


@pytest.fixture(scope="module")
def observation(checkpoint, tmp_path_factory):
    s = settled_frame(3, tmp_path_factory.mktemp("mujoco"))
    # the weights the graph's features node runs: the checkpoint's backbone (pick_graph_params)
    features = FeaturesModel.load(read_info(checkpoint).backbone, device="cpu").extract(s.frame.rgb)
    return {"rgb": s.frame.rgb, "features": features, "depth": s.frame.depth, "intrinsics": s.intrinsics,
            "detections": class_agnostic(s.detections), "masks": s.masks}


@pytest.fixture(scope="module")
def graph(dds_env, checkpoint, observation, tmp_path_factory):
    log = open(tmp_path_factory.mktemp("policy-graph") / "nodes.log", "w+")
    node_params = {"policy": {"checkpoint": checkpoint, "device": "cpu", "instruction": "pick up the cup",
                              "rate_hz": RATE, "max_input_age_s": MAX_AGE, "workspace_min": BOX_MIN,
                              "workspace_max": BOX_MAX, "max_opening_m": MAX_OPENING},
                   "pick": {"grasp_source": "policy", "perception_timeout_s": 10.0, "execution_timeout_s": 5.0}}
    running = start_graph(CONFIG, dict(dds_env, OMP_NUM_THREADS="1"), specs=(POLICY, PICK), node_params=node_params,
                          stdout=log, stderr=subprocess.STDOUT)
    probe = Probe(observation)
    client = PickClient()
    try:
        if not client.spin_until(lambda: client.client.server_is_ready() and probe.received["grasp"], 90, running):
            log.seek(0)
            pytest.fail(f"policy graph did not come up:\n{log.read()[-3000:]}")
        yield running, probe, client, checkpoint, log
    finally:   # also when a node died during start-up: no node may outlive the module
        client.close()
        probe.close()
        running.stop()
        log.close()


def test_commands_are_bounded_to_the_workspace_and_the_gripper(graph):
    _, probe, _, checkpoint, _ = graph
    start = time.monotonic()
    assert probe.wait(lambda: len(probe.since("grasp", start)) >= 4, 10)
    grasps, poses = probe.since("grasp", start), probe.since("pose", start)
    for msg in grasps:
        p = msg.grasp_pose.position
        assert all(lo - 1e-9 <= v <= hi + 1e-9 for v, lo, hi in zip((p.x, p.y, p.z), BOX_MIN, BOX_MAX)), p
        assert 0.0 <= msg.gripper_width <= MAX_OPENING
        assert msg.header.frame_id == "base_link" and stamp_ns(msg.header) in probe.stamps
        assert (msg.instruction, msg.object_class, msg.source) == ("pick up the cup", "cup", f"policy {checkpoint}")
        assert msg.dry_run and msg.command == GraspCommand.GRASP and 0.0 <= msg.score <= 1.0
    for msg in poses:
        p = msg.pose.position
        assert all(lo - 1e-9 <= v <= hi + 1e-9 for v, lo, hi in zip((p.x, p.y, p.z), BOX_MIN, BOX_MAX)), p
    ok = [msg.data for msg in probe.since("status", start) if msg.data.startswith("ok:")]
    assert ok and all("(workspace)" in text and "'pick up the cup'" in text for text in ok), ok[-1:]
    assert probe.received["command"] == [], "dry run: nothing may go to the executor"


def test_stale_features_stop_the_commands(graph):
    _, probe, _, _, _ = graph
    probe.send["features"] = False
    stopped = time.monotonic()
    try:
        assert probe.wait(lambda: any(m.data.startswith("stale:") for m in probe.since("status", stopped)), 5)
        # what was decided before the watchdog tripped may still be in flight for a tick or two
        quiet = stopped + MAX_AGE + 2 / RATE + 0.3
        time.sleep(max(0.0, quiet - time.monotonic()) + 1.5)
        assert probe.since("grasp", quiet) == [] and probe.since("pose", quiet) == []
        stale = probe.since("status", quiet)[-1].data
        assert stale.startswith("stale: features ") and " s old" in stale and "masks" not in stale, stale
    finally:
        probe.send["features"] = True
    resumed = time.monotonic()
    assert probe.wait(lambda: probe.since("grasp", resumed), 5), "commands did not resume with fresh inputs"
    assert probe.received["command"] == []


def test_only_a_crop_feature_policy_needs_the_image(graph):
    """Without the image a crop-feature policy stops, saying what it waits for; a mask-pooled one acts on."""
    _, probe, _, checkpoint, _ = graph
    crops = read_info(checkpoint).config.view.object_features == "crop"
    probe.send["image"] = False
    stopped = time.monotonic()
    try:
        quiet = stopped + MAX_AGE + 2 / RATE + 0.3
        time.sleep(quiet - time.monotonic() + 1.5)
        if crops:
            assert probe.since("grasp", quiet) == []
            stale = probe.since("status", quiet)[-1].data
            assert stale.startswith("stale: masks + image + depth ") and " s old" in stale, stale
        else:
            assert len(probe.since("grasp", quiet)) >= 4
    finally:
        probe.send["image"] = True
    resumed = time.monotonic()
    assert probe.wait(lambda: probe.since("grasp", resumed), 5), "commands did not resume with the image"


def test_the_pick_action_executes_the_policys_grasp(graph):
    _, probe, client, checkpoint, _ = graph
    record = client.pick("pick up the cup", 30)
    r = record.result
    assert r.failure_reason == "dry_run", f"{r.failure_reason}: {r.message}"
    assert r.perception_source == f"policy {checkpoint}" and r.target_phrase == "cup"
    assert [s for _, s, _ in record.stages] == ["waiting_for_perception", "planning", "executing", "verifying"]
    assert record.perceived is not None and record.after is not None   # sim-pick's visual record
    # the command is the policy's grasp for perception newer than the goal, re-sent by the pick node
    sent = [msg for _, msg in probe.received["command"]]
    assert len(sent) == 1 and sent[0].dry_run and sent[0].source == f"policy {checkpoint}"
    assert sent[0].header == r.grasp.header and sent[0].grasp_pose == r.grasp.grasp_pose
    policy = [msg for _, msg in probe.received["grasp"] if msg.header == r.grasp.header]
    assert policy and policy[0].grasp_pose.position == r.grasp.grasp_pose.position
    assert (policy[0].gripper_width, policy[0].instruction) == (r.grasp.gripper_width, "pick up the cup")
    q, back = policy[0].grasp_pose.orientation, r.grasp.grasp_pose.orientation
    assert abs(q.x * back.x + q.y * back.y + q.z * back.z + q.w * back.w) == pytest.approx(1.0, abs=1e-9)
    assert stamp_ns(r.grasp.header) > probe.stamps[0]


def test_a_policy_that_will_not_act_ends_the_pick_at_once(graph):
    _, probe, client, _, _ = graph
    commands = len(probe.received["command"])
    depth = probe.observation["depth"]
    probe.observation = {**probe.observation, "depth": np.zeros_like(depth)}   # no object has depth
    try:
        record = client.pick("pick up the cup", 30)
    finally:
        probe.observation = {**probe.observation, "depth": depth}
    r = record.result
    assert r.failure_reason == "no_points" and "the policy decided not to act" in r.message, r.message
    assert r.elapsed_s < 5.0 and len(probe.received["command"]) == commands
    refusals = [m for _, m in probe.received["grasp"] if m.command == GraspCommand.NONE]
    assert refusals and refusals[-1].reason.startswith("no_points: ") and refusals[-1].instruction == "pick up the cup"


def test_without_dry_run_each_new_instruction_is_commanded_once(graph):
    _, probe, _, checkpoint, _ = graph
    before = len(probe.received["command"])
    probe.set_parameter("policy", "dry_run", False)
    try:
        for round_ in range(2):   # the same words again are a new instruction (a new task)
            start = time.monotonic()
            probe.instructions.publish(String(data="grab the bottle"))
            assert probe.wait(lambda: len(probe.since("grasp", start)) >= 8, 10)   # many ticks at the rate ...
            sent = probe.since("command", start)
            assert len(sent) == 1, f"round {round_}: {len(sent)} commands"     # ... one command
            command = sent[0]
            assert not command.dry_run and command.instruction == "grab the bottle" and command.object_class == "bottle"
            assert command.source == f"policy {checkpoint}"
            assert any(m.header == command.header and m.grasp_pose == command.grasp_pose
                       for m in probe.since("grasp", start))
    finally:
        probe.set_parameter("policy", "dry_run", True)
    assert len(probe.received["command"]) == before + 2


def test_the_policy_graph_runs_the_features_of_the_policys_backbone(checkpoint, tmp_path):
    params = tmp_path / "policy.yaml"
    params.write_text(f"/**/policy:\n  ros__parameters:\n    checkpoint: {checkpoint}\n")
    specs = pick_graph(simulated=True, model_perception=False, grasp_source="policy")
    assert FEATURES in specs and POLICY in specs and specs[-1] == PICK
    values = pick_graph_params(True, False, "policy", [str(params)])
    assert values["features"]["model"] == read_info(checkpoint).backbone
    assert values["pick"] == {"grasp_source": "policy"}
    assert values["policy"] == {"dry_run": True, "checkpoint": checkpoint}
    assert values["sim"] == {"ground_truth_masks": True, "masks_scope": "all_objects"}
    robot = pick_graph_params(False, True, "policy", checkpoint=checkpoint)
    assert robot == {**{k: values[k] for k in ("features", "pick", "policy")},
                     "detector": {"masks_scope": "all_objects"}}   # on a robot the detector's boxes hold every object
    assert pick_graph_params(True, True, "policy", checkpoint=checkpoint)["sim"] == {"ground_truth_masks": False}
    assert POLICY not in pick_graph(True, False)
    assert pick_graph_params(True, False) == {"sim": {"ground_truth_masks": True}}
    with pytest.raises(ValueError, match="grasp_source"):
        pick_graph(True, False, "oracle")


def test_a_features_model_name_from_the_wire_is_never_opened_as_a_path(graph):
    """An over-long model name in DinoFeatures (it once crashed the node: the name was opened as a directory)
    is a mismatch with one reason; the node keeps serving and acts again on the next good features."""
    running, probe, _, _, _ = graph
    good = probe.observation
    probe.observation = {**good, "features": replace(good["features"], model="a/" * 3000 + "model")}
    start = time.monotonic()
    try:
        assert probe.wait(lambda: any("feature_mismatch" in m.data for m in probe.since("status", start)), 10), \
            [m.data for m in probe.since("status", start)][-3:]
    finally:
        probe.observation = good
    restored = time.monotonic()
    assert probe.wait(lambda: any(m.data.startswith("ok:") for m in probe.since("status", restored)), 10)
    assert running.failed() is None


def test_dds_sockets_stay_on_loopback(graph):
    running = graph[0]
    for pid in [os.getpid()] + [p.pid for p in running.processes.values()]:
        sockets = udp_sockets(pid)
        assert sockets and all(addr in ("127.0.0.1", "::1") for addr, _ in sockets), f"pid {pid}: {sockets}"


def test_an_unusable_checkpoint_is_a_clear_start_up_error(dds_env, tmp_path):
    result = subprocess.run([sys.executable, "-m", "dino_vla.ros.policy_node", "--ros-args", "-p",
                             f"checkpoint:={tmp_path / 'no-checkpoint'}"], env={**os.environ, **dds_env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no-checkpoint" in result.stderr and "checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
