"""Bad inputs over real DDS to node graphs started by the product's starter (issue 11 item 5, the rest of it):
the localiser when the stamps jump back (wall and sim time), the policy node when its workspace is narrowed at
run time, a Pick cancelled mid-grasp, and the features and detector nodes given unusable images. Each is
answered as the node documents (one log line naming the reason, no crash) and the next good message is served.

Graphs are class-scoped: each starts once and is stopped before the next class's starts, so that two graphs
on the default topics (the policy's and the simulator's /masks) never feed each other and the 2-core test
machine runs one graph at a time."""
from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest
import rclpy
from action_msgs.msg import GoalStatus
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters, SetParametersAtomically
from rclpy.qos import qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header, String

from dino_vla.action import Pick
from dino_vla.config import config_dir
from dino_vla.graph import DETECTOR, FEATURES, LOCALISER, PICK, POLICY, SIM, CameraTopics
from dino_vla.models.features import DinoFeatures as FeaturesModel
from dino_vla.msg import DetectionArray, DinoFeatures, GraspCommand, GraspOutcome, SegmentationMasks
from dino_vla.policy.checkpoint import random_checkpoint, read_info
from dino_vla.ros.conversions import numpy_to_image
from dino_vla.ros.launcher import start_graph
from dino_vla.ros.messages import camera_info_msg, detections_to_msg, features_to_msg, masks_to_msg, stamp_ns
from dino_vla.ros.pick_client import PickClient
from dino_vla.sim.scene import CAMERA_FRAME
from dino_vla.sim.stand_in import SOURCE, class_agnostic
from dino_vla.types import CameraIntrinsics, Detections, Masks
from support.ros import spin_until
from support.sim_frames import settled_frame

CONFIGS = [str(config_dir() / n) for n in ("perception.yaml", "pick.yaml", "policy.yaml", "sim.yaml")]
SECOND = 1_000_000_000


def _graph(tmp_path_factory, name: str, env: dict, specs, **kwargs):
    """start_graph with every node's output in one log file (the nodes' own lines are what is checked)."""
    log = open(tmp_path_factory.mktemp(name) / "nodes.log", "w+")
    env = dict(env, OMP_NUM_THREADS="1", MUJOCO_GL="egl")
    return start_graph(CONFIGS, env, specs=specs, stdout=log, stderr=subprocess.STDOUT, **kwargs), log


def _lines(log, *words: str) -> list[str]:
    log.flush()
    log.seek(0)
    return [line for line in log.read().splitlines() if all(w in line for w in words)]


def _fail_start(running, log, what: str):
    log.seek(0)
    pytest.fail(f"{what} did not come up ({running.failed()}):\n{log.read()[-3000:]}")


def _stop(running, log, node=None) -> None:
    if node is not None:
        node.destroy_node()
    running.stop()
    log.close()


def _header(stamp: int) -> Header:
    header = Header(frame_id=CAMERA_FRAME)
    header.stamp.sec, header.stamp.nanosec = divmod(stamp, SECOND)
    return header


# --- 1. the localiser when the clock jumps back -------------------------------------------------------------
H, W = 48, 64


class CameraProbe:
    """The camera, the segmenter and (sim time) the simulator's /clock of one localiser in namespace `ns`: a
    tilted plane 0.8 m away with one 24x20 'cup' mask on it."""

    def __init__(self, ns: str, sim_time: bool):
        self.node = n = rclpy.create_node(f"{ns}_camera_probe")
        self.depth = n.create_publisher(Image, f"/{ns}/depth", qos_profile_sensor_data)
        self.info = n.create_publisher(CameraInfo, f"/{ns}/camera_info", qos_profile_sensor_data)
        self.masks = n.create_publisher(SegmentationMasks, f"/{ns}/masks", 10)
        self.clock = n.create_publisher(Clock, "/clock", 10) if sim_time else None
        self.objects: dict[int, DetectionArray] = {}
        n.create_subscription(DetectionArray, f"/{ns}/objects", lambda m: self.objects.__setitem__(
            stamp_ns(m.header), m), 10)
        yy, xx = np.mgrid[:H, :W]
        self.depth_m = (0.8 + 0.002 * xx + 0.001 * yy).astype(np.float32)
        box, score = np.array([[20, 14, 44, 34]], np.float32), np.array([0.9], np.float32)
        self.detections = Detections(box, score, ("cup",), (H, W))
        self.mask = Masks(((yy >= 14) & (yy < 34) & (xx >= 20) & (xx < 44))[None], score)
        self.k = CameraIntrinsics(60.0, 60.0, 32.0, 24.0, W, H)

    def send(self, stamp: int) -> None:
        header = _header(stamp)
        if self.clock is not None:   # a simulator's clock: the same time as its camera's stamps
            self.clock.publish(Clock(clock=header.stamp))
        self.depth.publish(numpy_to_image(self.depth_m, "32FC1", header))
        self.info.publish(camera_info_msg(header, self.k))
        self.masks.publish(masks_to_msg(header, detections_to_msg(header, self.detections, "pick up the cup"),
                                        self.detections, self.mask, "probe"))

    def stream(self, first: int, wanted: int, sends: int = 40) -> tuple[list[int], list[int]]:
        """Sets stamped first, first + 0.1 s, ... each sent once, until `wanted` of them were answered on
        objects (best-effort camera QoS may lose some): (stamps sent, stamps answered)."""
        sent: list[int] = []
        answered = lambda: [s for s in sent if s in self.objects]  # noqa: E731
        for i in range(sends):
            sent.append(first + i * SECOND // 10)
            self.send(sent[-1])
            if spin_until(self.node, lambda: len(answered()) >= wanted, 0.25):
                break
        return sent, answered()


@pytest.fixture(scope="class")
def localisers(dds_env, tmp_path_factory):
    """Two localisers: `wall` on the system clock, `simtime` with use_sim_time:=true (a bag or a simulator)."""
    out = {}
    try:
        for ns, sim_time in (("wall", False), ("simtime", True)):
            running, log = _graph(tmp_path_factory, f"localiser-{ns}", dds_env, (LOCALISER,), namespace=ns,
                                  camera=CameraTopics(depth=f"/{ns}/depth", camera_info=f"/{ns}/camera_info"),
                                  node_params={"localiser": {"use_sim_time": True}} if sim_time else None)
            out[ns] = (running, CameraProbe(ns, sim_time), log)
        for running, p, log in out.values():
            if not spin_until(p.node, lambda: all(x.get_subscription_count() for x in (p.depth, p.info, p.masks)),
                              60):
                _fail_start(running, log, "localiser")
        yield out
    finally:   # also when a start failed: no node may outlive the class
        for running, probe, log in out.values():
            _stop(running, log, probe.node)


def _call(node, kind, service: str, request):
    """A parameter service's answer; the request is sent again when the response was lost (a new client's
    reader not yet matched by the server: support/ros.py); both requests used here are idempotent."""
    client = node.create_client(kind, service)
    assert spin_until(node, client.service_is_ready, 10), f"no service {service}"
    for _ in range(3):
        future = client.call_async(request)
        if spin_until(node, future.done, 5):
            return future.result()
    raise AssertionError(f"{service} did not answer {request}")


class TestLocaliserClockJumpingBack:
    @pytest.mark.parametrize("ns", ["wall", "simtime"])
    def test_the_localiser_restarts_matching_at_once_when_the_stamps_jump_back(self, localisers, ns):
        """Stamps go forward, then jump back 500 s (a bag loop; with sim time /clock steps back too, a
        simulator reset): one warning says the clock jumped back, and the first sets of the new, earlier
        stamps are localised at once (without the restart every one would be refused as late), then the
        following ones too. The node keeps running."""
        running, probe, log = localisers[ns]
        if ns == "simtime":
            answer = _call(probe.node, GetParameters, f"/{ns}/localiser/get_parameters",
                           GetParameters.Request(names=["use_sim_time"]))
            assert answer.values[0].bool_value, "the localiser is not on sim time"
        sent, answered = probe.stream(1000 * SECOND, 3)
        assert len(answered) >= 3, f"the localiser did not answer going forward: {len(sent)} sets sent"
        spin_until(probe.node, lambda: False, 0.5)   # nothing of the forward stream still in flight
        assert _lines(log, "the clock jumped back") == []
        sent, answered = probe.stream(500 * SECOND, 1, sends=10)
        assert answered and sent.index(answered[0]) < 5, f"no objects for the earlier stamps ({len(sent)} sent)"
        objects = probe.objects[answered[0]]
        assert objects.header.frame_id == "base_link" and objects.instruction == "pick up the cup"
        assert [(d.class_id, d.has_pose) for d in objects.detections] == [("cup", True)]
        jumped = _lines(log, "the clock jumped back")
        assert len(jumped) == 1 and "WARN" in jumped[0] and "behind the newest" in jumped[0], jumped
        _, more = probe.stream(sent[-1] + SECOND // 10, 3)
        assert len(more) >= 3 and running.failed() is None
        assert _lines(log, "Traceback") == []


# --- 2. the policy node's workspace narrowed at run time ----------------------------------------------------
RATE = 5.0


@pytest.fixture(scope="module")
def checkpoint(tiny_models, tmp_path_factory) -> str:
    return random_checkpoint(tmp_path_factory.mktemp("policy") / "checkpoint", tiny_models.features)


@pytest.fixture(scope="class")
def policy_graph(dds_env, checkpoint, tmp_path_factory):
    """The policy node alone, fed a real MuJoCo frame (its tiny DINOv2 features, ground-truth masks, depth) at
    its own rate by the probe's timer while the probe spins."""
    s = settled_frame(3, tmp_path_factory.mktemp("mujoco"))
    features = FeaturesModel.load(read_info(checkpoint).backbone, device="cpu").extract(s.frame.rgb)
    detections = class_agnostic(s.detections)
    running, log = _graph(tmp_path_factory, "policy", dds_env, (POLICY,), node_params={"policy": {
        "checkpoint": checkpoint, "device": "cpu", "instruction": "pick up the cup", "rate_hz": RATE}})
    node = rclpy.create_node("workspace_probe")
    topics = CameraTopics()
    pubs = (node.create_publisher(DinoFeatures, "/features", 10),
            node.create_publisher(Image, topics.depth, qos_profile_sensor_data),
            node.create_publisher(CameraInfo, topics.camera_info, qos_profile_sensor_data),
            node.create_publisher(SegmentationMasks, "/masks", 10))
    seen = {"poses": [], "status": [], "sent": []}   # (time.monotonic(), msg); sent: stamps

    def feed():
        header = Header(stamp=node.get_clock().now().to_msg(), frame_id=CAMERA_FRAME)
        for pub, msg in zip(pubs, (features_to_msg(header, features), numpy_to_image(s.frame.depth, "32FC1", header),
                                   camera_info_msg(header, s.intrinsics),
                                   masks_to_msg(header, detections_to_msg(header, detections), detections, s.masks,
                                                SOURCE))):
            pub.publish(msg)
        seen["sent"].append(stamp_ns(header))

    node.create_timer(1.0 / RATE, feed)
    for key, kind, topic in (("poses", PoseStamped, "/policy/grasp_pose"), ("status", String, "/policy/status")):
        node.create_subscription(kind, topic, lambda m, key=key: seen[key].append((time.monotonic(), m)), 50)
    try:
        if not spin_until(node, lambda: seen["poses"], 90):
            _fail_start(running, log, "policy")
        yield running, node, seen
    finally:
        _stop(running, log, node)


def _set_arrays(node, target: str, values: dict[str, tuple[float, ...]]) -> None:
    """Set double-array parameters of `target` together: set_parameters_atomically, one change checked once
    (support/ros.py's set_parameter takes bool and str only)."""
    request = SetParametersAtomically.Request(parameters=[Parameter(name=name, value=ParameterValue(
        type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=list(v))) for name, v in values.items()])
    result = _call(node, SetParametersAtomically, f"/{target}/set_parameters_atomically", request).result
    assert result.successful, f"/{target} refused {values}: {result.reason}"


class TestPolicyWorkspaceNarrowed:
    def test_setpoints_are_inside_a_workspace_narrowed_at_run_time_from_the_next_period(self, policy_graph):
        """A 2 cm box set at run time, far (> max_speed_mps / rate_hz) from the last setpoint: every setpoint on
        policy/grasp_pose made from perception sent after the change, and every one arriving later than two
        periods after it, is inside the new box: the rate limiter starts from the nearest point of the new
        box instead of crawling in from outside, and the status says so."""
        running, node, seen = policy_graph
        last = seen["poses"][-1][1].pose.position
        x, y = (-0.40 if last.x > 0 else 0.38), (-0.30 if last.y > 0 else 0.28)   # >= 0.38 m away in x
        low, high = (x, y, 0.80), (x + 0.02, y + 0.02, 0.82)
        _set_arrays(node, "policy", {"workspace_min": low, "workspace_max": high})
        # the feed runs only while this node spins: what is sent from now on left after the change was answered
        changed, first_new = time.monotonic(), len(seen["sent"])

        def after_change():
            new_stamps = set(seen["sent"][first_new:])
            return [m for at, m in seen["poses"] if stamp_ns(m.header) in new_stamps or at > changed + 2 / RATE]

        assert spin_until(node, lambda: len(after_change()) >= 6, 20), "no setpoints after the change"
        for msg in after_change():
            p = msg.pose.position
            assert all(lo - 1e-9 <= v <= hi + 1e-9 for v, lo, hi in zip((p.x, p.y, p.z), low, high)), (p, low, high)
        notes = [m.data for at, m in seen["status"] if at > changed]
        assert any("is outside the workspace: moved from" in text for text in notes), notes[-3:]
        assert running.failed() is None


# --- 3. a Pick cancelled while the grasp executes ---------------------------------------------------------
@pytest.fixture(scope="class")
def pick_graph(dds_env, tmp_path_factory):
    """sim + localiser + pick, ground-truth masks, grasps at real time (real_time_factor 1) so that a cancel
    arrives mid-motion."""
    running, log = _graph(tmp_path_factory, "pick", dds_env, (SIM, LOCALISER, PICK),
                          node_params={"sim": {"seed": 3, "real_time_factor": 1.0}})
    client = PickClient()
    seen = {"commands": [], "outcomes": [], "truth": []}
    for key, kind, topic in (("commands", GraspCommand, "/grasp_command"), ("outcomes", GraspOutcome, "/grasp_outcome"),
                             ("truth", DetectionArray, "/sim/objects")):
        client.node.create_subscription(kind, topic, lambda m, key=key: seen[key].append((time.monotonic(), m)), 20)
    try:
        if not client.spin_until(lambda: client.client.server_is_ready() and seen["truth"], 90, running):
            _fail_start(running, log, "pick graph")
        yield running, client, seen, log
    finally:
        client.close()
        _stop(running, log)


def _cup_z(truth: DetectionArray) -> float:
    return next(d.pose.position.z for d in truth.detections if d.class_id == "cup")


class TestPickCancel:
    def test_cancelling_a_pick_mid_grasp_sends_stop_and_nothing_is_lifted(self, pick_graph):
        """A real Pick goal cancelled 0.5 s after its grasp went out: STOP on grasp_command, the goal ends
        CANCELED with failure_reason cancelled, the simulator reports the grasp `cancelled: ...` and the cup
        stays on the table; the next goal picks the cup."""
        running, client, seen, log = pick_graph
        cup_before = _cup_z(seen["truth"][-1][1])
        stages: list[str] = []
        goal = client._send_goal(Pick.Goal(instruction="pick up the cup"),
                                 lambda m: stages.append(m.feedback.stage), running)   # lost-response safe
        sent = lambda command: [m for _, m in seen["commands"] if m.command == command]  # noqa: E731
        assert client.spin_until(lambda: sent(GraspCommand.GRASP), 60, running), f"no grasp went out; stages {stages}"
        grasp = sent(GraspCommand.GRASP)[0]
        client.spin_until(lambda: False, 0.5, running)   # real time: the arm is on its way
        assert not grasp.dry_run and "executing" in stages, stages
        goal.cancel_goal_async()
        result = client._await_result(goal, 30, running)
        assert result.failure_reason == "cancelled" and "STOP sent" in result.message, result
        key = bytes(goal.goal_id.uuid)
        assert client.spin_until(lambda: client.goal_statuses.get(key) == GoalStatus.STATUS_CANCELED, 10), \
            client.goal_statuses.get(key)
        # the STOP and the action's result travel on different topics: either may arrive first
        assert client.spin_until(lambda: sent(GraspCommand.STOP), 10, running), "no STOP arrived on grasp_command"
        stops = sent(GraspCommand.STOP)
        assert len(stops) == 1 and stops[0].reason == "the Pick goal was cancelled" and not stops[0].dry_run
        assert client.spin_until(lambda: any(m.header == grasp.header for _, m in seen["outcomes"]), 20)
        at, outcome = next((at, m) for at, m in seen["outcomes"] if m.header == grasp.header)
        assert not outcome.success and outcome.reason.startswith("cancelled"), outcome.reason
        assert outcome.lifted_m < 0.02 and outcome.lifted_object == ""
        assert any(m.header == stops[0].header and m.reason == "stopped: the grasp in progress was stopped"
                   for _, m in seen["outcomes"])
        assert client.spin_until(lambda: any(t > at + 0.5 for t, _ in seen["truth"]), 10), "the camera did not resume"
        assert abs(_cup_z(seen["truth"][-1][1]) - cup_before) < 0.02, "the cup was lifted"
        assert _lines(log, "sent STOP on grasp_command") and running.failed() is None
        record = client.pick("pick up the cup", 60, running)   # the next goal is served: the arm was not left stopped
        assert record.result.success, f"{record.result.failure_reason}: {record.result.message}"


# --- 4. the features and detector nodes given bad images --------------------------------------------------
MODEL_IMAGE = "/bad_models/image"


@pytest.fixture(scope="class")
def model_graph(dds_env, tiny_models, tmp_path_factory):
    """features + detector (managed: configured and activated by start_graph) with the tiny models."""
    running, log = _graph(tmp_path_factory, "model-nodes", dds_env, (FEATURES, DETECTOR), device="cpu",
                          camera=CameraTopics(image=MODEL_IMAGE),
                          models={"features": tiny_models.features, "detector": tiny_models.detector})
    node = rclpy.create_node("bad_image_probe")
    images = node.create_publisher(Image, MODEL_IMAGE, qos_profile_sensor_data)
    outputs = {"features": set(), "detections": set()}
    for key, kind in (("features", DinoFeatures), ("detections", DetectionArray)):
        node.create_subscription(kind, f"/{key}", lambda m, key=key: outputs[key].add(stamp_ns(m.header)), 10)
    try:
        if not spin_until(node, lambda: images.get_subscription_count() >= 2, 60) or running.failed():
            _fail_start(running, log, "features and detector")
        yield running, node, images, outputs, log
    finally:
        _stop(running, log, node)


class TestModelNodesBadImages:
    def test_features_and_detector_answer_bad_images_and_serve_the_next_good_one(self, model_graph, coffee):
        """A 1x1 image, a yuv422 one and one with fewer bytes than step*height: each node logs one line naming
        the reason (sent again until both have: best-effort frames may be lost), keeps running, and publishes
        features and detections for the next good frame (skimage's coffee)."""
        running, node, images, outputs, log = model_graph
        stamp = [2000 * SECOND]

        def send(msg: Image) -> int:
            stamp[0] += SECOND // 10
            msg.header = _header(stamp[0])
            images.publish(msg)
            return stamp[0]

        def served() -> bool:
            sent: set[int] = set()
            for _ in range(20):
                sent.add(send(numpy_to_image(coffee, "rgb8")))
                if spin_until(node, lambda: all(outputs[k] & sent for k in outputs), 3.0):
                    return True
            return False

        def logged(reason: str) -> bool:
            return all(_lines(log, f"[{name}]", reason) for name in ("features", "detector"))

        assert served(), "no features and detections for a good frame"
        for image_msg, reason in (
                (numpy_to_image(np.zeros((1, 1, 3), np.uint8), "rgb8"), "image too small: 1x1"),
                (Image(height=4, width=4, encoding="yuv422", step=8, data=bytes(32)), "unsupported encoding"),
                (Image(height=4, width=4, encoding="rgb8", step=12, data=bytes(20)), "bytes, need")):
            began = time.monotonic()
            assert any(send(image_msg) and spin_until(node, lambda: logged(reason), 1.5) for _ in range(10)), \
                f"no line saying {reason!r}: {_lines(log, 'skipping')}"
            if time.monotonic() - began < 5.0:   # resent within one throttle period: one line per node
                assert all(len(_lines(log, f"[{n}]", reason)) == 1 for n in ("features", "detector")), \
                    _lines(log, reason)
            assert running.failed() is None and served(), reason
        assert _lines(log, "Traceback") == []
