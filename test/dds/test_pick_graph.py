"""The simulated pick over real DDS: sim, localiser and pick nodes as separate processes, started from the
same graph description as `dino-vla sim-pick`, driven through the Pick action by the product's own client."""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from rclpy.action.client import ClientGoalHandle
from rclpy.task import Future
from sensor_msgs.msg import PointCloud2
from visualization_msgs.msg import MarkerArray

from dino_vla.config import config_dir
from dino_vla.dds import udp_sockets
from dino_vla.graph import PICK, pick_graph
from dino_vla.msg import DetectionArray, GraspCommand, SegmentationMasks
from dino_vla.ros.conversions import image_to_numpy
from dino_vla.ros.launcher import start_graph
from dino_vla.ros.messages import cloud_from_msg, stamp_ns
from dino_vla.ros.pick_client import PickClient
from dino_vla.instruction import OBJECT
from dino_vla.sim.stand_in import SOURCE
from support.ros import set_parameter

CONFIG = [str(config_dir() / name) for name in ("perception.yaml", "pick.yaml", "sim.yaml")]
SEED = 3


@pytest.fixture(scope="module")
def graph(dds_env, tmp_path_factory):
    log = open(tmp_path_factory.mktemp("pick-graph") / "nodes.log", "w+")
    # MuJoCo writes MUJOCO_LOG.TXT into the working directory on warnings
    running = start_graph(CONFIG, dict(dds_env, MUJOCO_GL="egl"),
                          specs=pick_graph(simulated=True, model_perception=False),
                          node_params={"sim": {"seed": SEED}}, stdout=log, stderr=subprocess.STDOUT)
    client = PickClient()
    outputs = {"objects": [], "truth": [], "clouds": [], "markers": [], "commands": []}
    for topic, kind, key in (("/objects", DetectionArray, "objects"), ("/sim/objects", DetectionArray, "truth"),
                             ("/object_cloud", PointCloud2, "clouds"), ("/markers", MarkerArray, "markers"),
                             ("/grasp_command", GraspCommand, "commands")):
        client.node.create_subscription(kind, topic, outputs[key].append, 20)
    if not client.spin_until(client.client.server_is_ready, 90, running):
        running.stop()
        log.seek(0)
        pytest.fail(f"pick graph did not come up:\n{log.read()[-3000:]}")
    yield running, client, outputs, log
    client.close()
    running.stop()
    log.close()


def _set_parameter(client: PickClient, node: str, name: str, value: bool | str) -> None:
    set_parameter(client.node, client.spin_until, node, name, value)


@pytest.mark.parametrize("instruction, why", [
    ("dance the macarena", "not_an_instruction"), ("throw the cup", "unsupported_action"),
    ("where is the cup?", "asks to find the cup")])
def test_what_is_not_a_pick_fails_at_once_and_moves_nothing(graph, instruction, why):
    _, client, outputs, _ = graph
    commands = len(outputs["commands"])
    record = client.pick(instruction, 30)
    assert not record.result.success and record.result.failure_reason == "bad_instruction"
    assert repr(instruction) in record.result.message and why in record.result.message
    assert record.result.elapsed_s < 2.0 and len(outputs["commands"]) == commands


def test_an_object_that_is_not_there_is_no_object(graph):
    _, client, _, _ = graph
    record = client.pick("pick up the green cup", 60)    # the cup is red
    assert not record.result.success and record.result.failure_reason == "no_object", record.result.message
    assert "no 'green cup' detected (the ones seen are red)" in record.result.message


def test_dry_run_plans_and_sends_but_nothing_moves(graph):
    _, client, outputs, _ = graph
    _set_parameter(client, "pick", "dry_run", True)
    try:
        record = client.pick("pick up the cup", 60)
    finally:
        _set_parameter(client, "pick", "dry_run", False)
    r = record.result
    assert not r.success and r.failure_reason == "dry_run", r.message
    assert r.grasp.dry_run and r.grasp.header.frame_id == "base_link" and r.lifted_object == ""
    cup_z = [d.pose.position.z for d in outputs["truth"][-1].detections if d.class_id == "cup"]
    assert cup_z and cup_z[0] < 0.5, "the cup must still stand on the table"


def test_the_cup_is_picked_over_dds(graph):
    _, client, outputs, _ = graph
    truth = {d.class_id: d.pose.position for d in outputs["truth"][-1].detections}
    record = client.pick("pick up the cup", 60)
    r = record.result
    assert r.success, f"{r.failure_reason}: {r.message}"
    assert (r.target_phrase, r.object.class_id, r.lifted_object) == ("cup", "cup", "cup")
    assert r.perception_source == SOURCE and r.lifted_m > 0.12
    assert [s for _, s, _ in record.stages] == ["waiting_for_perception", "localising", "planning",
                                                "executing", "verifying"]
    grasp = r.grasp.grasp_pose.position
    assert r.grasp.header.frame_id == "base_link" and not r.grasp.dry_run
    assert np.hypot(grasp.x - truth["cup"].x, grasp.y - truth["cup"].y) < 0.015
    assert record.perceived is not None and record.after is not None


def test_localiser_publishes_3d_objects_clouds_and_markers(graph):
    _, client, outputs, _ = graph
    assert client.spin_until(lambda: outputs["objects"] and outputs["clouds"] and outputs["markers"], 20)
    objects = outputs["objects"][-1]
    assert objects.header.frame_id == "base_link" and objects.instruction == "pick up the cup"
    assert objects.detections and all(d.has_pose and d.class_id == "cup" for d in objects.detections)
    assert any(stamp_ns(c.header) == stamp_ns(objects.header) for c in outputs["clouds"])
    points = cloud_from_msg(outputs["clouds"][-1])
    assert len(points) > 30 and np.all(np.isfinite(points))
    assert outputs["markers"][-1].markers[0].action == 3  # DELETEALL first


@pytest.fixture(scope="module")
def lonely(graph, dds_env, tmp_path_factory):
    """A second pick node, in namespace `lonely`, whose masks never come (nothing publishes /lonely/masks)."""
    log = open(tmp_path_factory.mktemp("lonely") / "nodes.log", "w+")
    running = start_graph(CONFIG, dds_env, specs=(PICK,), namespace="lonely",
                          node_params={"pick": {"perception_timeout_s": 1.5}}, stdout=log, stderr=subprocess.STDOUT)
    client = PickClient(action="/lonely/pick", node_name="lonely_pick_client")
    yield running, client
    client.close()
    running.stop()
    log.close()


def test_a_pick_without_perception_times_out(lonely):
    running, client = lonely
    record = client.pick("pick up the cup", 30, running)
    assert record.result.failure_reason == "timeout" and "1.5 s" in record.result.message
    assert 1.4 < record.result.elapsed_s < 5.0


def test_a_lost_goal_response_is_recovered_from_the_status_topic(lonely, monkeypatch):
    """The goal reaches the server but its response never reaches the client (what Fast DDS does when the
    server has not yet matched the client's response reader): the client finds the goal on the status
    topic and still gets its result, without sending it twice."""
    running, client = lonely
    sent = []

    def response_lost(goal, **kwargs):
        sent.append(client.client.__class__.send_goal_async(client.client, goal, **kwargs))
        return Future()   # never done

    monkeypatch.setattr(client.client, "send_goal_async", response_lost)
    record = client.pick("pick up the cup", 30, running)
    assert len(sent) == 1
    assert record.result.failure_reason == "timeout" and "1.5 s" in record.result.message


def test_a_lost_result_response_is_asked_for_again(lonely, monkeypatch):
    """The same race on the result service: the goal has ended on the server (status topic) but the answer
    never came, so the client asks for the result again."""
    running, client = lonely
    requests = []
    real = ClientGoalHandle.get_result_async

    def first_answer_lost(handle):
        requests.append(real(handle))
        return Future() if len(requests) == 1 else requests[-1]

    monkeypatch.setattr(ClientGoalHandle, "get_result_async", first_answer_lost)
    record = client.pick("pick up the cup", 30, running)
    assert len(requests) >= 2 and record.result.failure_reason == "timeout"


def test_class_agnostic_masks_hold_every_visible_object(graph):
    """masks_scope all_objects (what the policy takes): every object of the simulator's segmentation, each
    labelled `object`, whatever the instruction names."""
    _, client, _, _ = graph
    masks, segmentation = {}, {}
    client.node.create_subscription(SegmentationMasks, "/masks", lambda m: masks.__setitem__(stamp_ns(m.header), m), 10)
    client.node.create_subscription(SegmentationMasks, "/sim/segmentation",
                                    lambda m: segmentation.__setitem__(stamp_ns(m.header), m), 10)
    _set_parameter(client, "sim", "masks_scope", "all_objects")
    try:
        def paired():
            return [(m, segmentation[t]) for t, m in masks.items()
                    if t in segmentation and m.detections and all(d.class_id == OBJECT for d in m.detections)]
        assert client.spin_until(paired, 10), "no class-agnostic masks"
        m, truth = paired()[-1]
        assert m.source == SOURCE and m.instruction == "pick up the cup"
        assert len(m.detections) == len(truth.detections) > 2   # the cup and its distractors
        np.testing.assert_array_equal(image_to_numpy(m.labels), image_to_numpy(truth.labels))
    finally:
        _set_parameter(client, "sim", "masks_scope", "instruction")
    masks.clear()
    assert client.spin_until(lambda: any(d.class_id == "cup" for m in list(masks.values()) for d in m.detections), 10)


def test_dds_sockets_stay_on_loopback(graph):
    running, _, _, _ = graph
    for pid in [os.getpid()] + [p.pid for p in running.processes.values()]:
        sockets = udp_sockets(pid)
        assert sockets and all(addr in ("127.0.0.1", "::1") for addr, _ in sockets), f"pid {pid}: {sockets}"


def test_a_second_pick_server_on_the_domain_is_counted(graph, dds_env, tmp_path):
    """What `sim-pick` checks before it sends its goal: another graph's pick server on the same domain (one
    chosen by hand with --domain-id) shows as a second server of /pick, and is gone once that node stops."""
    _, client, _, _ = graph
    assert client.server_count() == 1
    with open(tmp_path / "other.log", "w+") as log:
        other = start_graph(CONFIG, dds_env, specs=(PICK,), stdout=log, stderr=subprocess.STDOUT)
        try:
            counted = client.spin_until(lambda: client.server_count() == 2, 60, other)
            log.seek(0)
            assert counted, log.read()[-3000:]
        finally:
            other.stop()
    assert client.spin_until(lambda: client.server_count() == 1, 20)
