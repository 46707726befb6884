"""ROS-free checks of what a real camera, a bag replay or a misconfigured robot sends (issue 11 item 5): each
bad input is refused with a reason naming it, and the code that refused it serves the next good one."""
from __future__ import annotations

import math

import numpy as np
import pytest
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from std_msgs.msg import Header

from dino_vla.geometry.depth import DepthFrame
from dino_vla.geometry.grasp_planner import Workspace
from dino_vla.msg import GraspCommand
from dino_vla.pipeline import validate_image
from dino_vla.policy.limits import CommandLimits
from dino_vla.policy.runner import same_weights
from dino_vla.ros.messages import grasp_from_msg
from dino_vla.ros.node_base import ReasonThrottle
from dino_vla.sync import ApproximateTimeSync
from dino_vla.types import CameraIntrinsics, Detections, Grasp

S = 1_000_000_000


def test_reasons_are_throttled_each_on_its_own():
    now = [0.0]
    throttle = ReasonThrottle(5.0, clock=lambda: now[0])
    assert throttle.allow("empty image") and throttle.allow("unsupported encoding 'yuv422'")
    assert not throttle.allow("empty image")
    now[0] = 5.0
    assert throttle.allow("empty image")


@pytest.mark.parametrize("box", [[math.nan, 0, 10, 10], [0, 0, math.inf, 5], [0, -math.inf, 3, 3]])
def test_non_finite_boxes_are_refused(box):
    with pytest.raises(ValueError, match="non-finite box coordinates in detection 1"):
        Detections(np.array([[0, 0, 5, 5], box], np.float32), np.ones(2, np.float32), ("cup", "cup"), (10, 10))


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 50, 3), (50, 1, 3)])
def test_images_too_small_for_the_models_are_refused(shape):
    with pytest.raises(ValueError, match="image too small"):
        validate_image(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("fx, fy, size", [(0.0, 0.0, (640, 480)), (math.nan, 500.0, (640, 480)),
                                          (500.0, math.inf, (640, 480)), (500.0, 500.0, (0, 480))])
def test_camera_info_without_usable_intrinsics_is_refused(fx, fy, size):
    with pytest.raises(ValueError, match="no usable intrinsics"):
        CameraIntrinsics(fx, fy, 320.0, 240.0, *size)


def test_depth_without_a_frame_or_of_another_size_is_refused():
    k = CameraIntrinsics(500.0, 500.0, 31.5, 23.5, 64, 48)
    with pytest.raises(ValueError, match="empty frame_id"):
        DepthFrame(np.ones((48, 64), np.float32), k, "")
    with pytest.raises(ValueError, match="depth is 32x24, the intrinsics say 64x48"):
        DepthFrame(np.ones((24, 32), np.float32), k, "camera")


def _command(q=(0.0, 0.0, 0.0, 1.0), p=(0.3, 0.0, 0.8)) -> GraspCommand:
    return GraspCommand(header=Header(frame_id="base_link"), command=GraspCommand.GRASP,
                        grasp_pose=Pose(position=Point(x=p[0], y=p[1], z=p[2]),
                                        orientation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3])),
                        approach=Vector3(z=-1.0), gripper_width=0.05)


@pytest.mark.parametrize("command, why", [
    (_command(q=(0.0, 0.0, 0.0, 0.0)), "not a rotation quaternion"),
    (_command(q=(math.nan, 0.0, 0.0, 1.0)), "not a rotation quaternion"),
    (_command(p=(math.nan, 0.0, 0.8)), "finite numbers"),
    (_command(p=(0.3, math.inf, 0.8)), "finite numbers")])
def test_grasp_commands_that_are_not_poses_are_refused(command, why):
    with pytest.raises(ValueError, match=why):
        grasp_from_msg(command)
    assert grasp_from_msg(_command()).position.tolist() == [0.3, 0.0, 0.8]


def test_setpoints_stay_in_a_workspace_narrowed_at_run_time():
    wide = CommandLimits(Workspace("base_link", (-1.0, -1.0, 0.7), (1.0, 1.0, 1.5), 0.7), 0.08, 0.1, 1.0)
    narrow = CommandLimits(Workspace("base_link", (0.2, 0.2, 0.8), (0.3, 0.3, 0.9), 0.7), 0.08, 0.1, 1.0)
    target = Grasp(np.array([0.25, 0.25, 0.85]), np.array([0.0, 0.0, -1.0]), 0.0, 0.05, 1.0, "cup", "base_link")
    previous, _ = wide.clamp(Grasp(np.array([-0.8, -0.8, 1.4]), target.approach, 0.0, 0.05, 1.0, "cup",
                                   "base_link"), None, 0.1)
    for period in range(3):   # before the fix the setpoint crept in from outside at max_speed_mps for periods
        previous, notes = narrow.clamp(target, previous, 0.1)
        assert narrow.workspace.outside(previous.position) == [], (previous.position, notes)
        assert any("is outside the workspace" in n for n in notes) == (period == 0), notes


def test_a_received_model_name_is_never_opened_as_a_path(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    assert not same_weights("x" * 5000, str(tmp_path))                 # once: OSError, file name too long
    assert not same_weights("a\0b", str(tmp_path), frozenset({"a\0b", str(tmp_path)}))
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "model.safetensors").write_bytes(b"weights")
    assert not same_weights(str(copy), str(tmp_path))                  # not named readable: names differ
    assert same_weights(str(copy), str(tmp_path), frozenset({str(copy), str(tmp_path)}))


def test_duplicate_stamps_are_refused_and_the_first_kept():
    notices = []
    sync = ApproximateTimeSync(["depth", "masks"], slop_ns=0, on_notice=lambda *n: notices.append(n))
    sync.add("depth", 5 * S, "depth5")
    assert sync.add("depth", 5 * S, "depth5 again") == []
    assert sync.add("masks", 5 * S, "masks5") == [(5 * S, {"depth": "depth5", "masks": "masks5"})]
    assert sync.duplicates == 1 and notices[0][:2] == ("duplicate", "depth") and "5.000 s" in notices[0][2]


@pytest.mark.parametrize("jump_to", [0, 3 * S])   # a simulator reset under /clock; a bag replay looping back
def test_a_clock_that_jumps_back_restarts_matching(jump_to):
    notices = []
    sync = ApproximateTimeSync(["depth", "info", "masks"], slop_ns=10_000_000, on_notice=lambda *n: notices.append(n))
    for t in range(10, 14):
        for stream in ("depth", "info", "masks"):
            out = sync.add(stream, t * S, f"{stream}{t}")
        assert out and out[0][0] == t * S
    matched = []
    for k in range(3):   # after the jump every frame matches again at once, not once time passes 13 s
        t = jump_to + k * S // 10
        for stream in ("depth", "info", "masks"):
            matched += sync.add(stream, t, f"{stream}@{t}")
    assert [stamp for stamp, _ in matched] == [jump_to + k * S // 10 for k in range(3)]
    assert sync.restarts == 1 and [n[0] for n in notices] == ["jump_back"]
    assert "clock jumped back" in notices[0][2]


def test_a_small_step_back_is_late_not_a_jump():
    sync = ApproximateTimeSync(["a", "b"], slop_ns=0)
    sync.add("a", 10 * S, 1)
    sync.add("b", 10 * S, 1)
    assert sync.add("a", 10 * S - S // 2, 2) == [] and sync.late == 1 and sync.restarts == 0


def test_a_stopped_grasp_stops_opens_and_lifts_nothing(tmp_path, monkeypatch):
    from dino_vla.sim.mujoco_sim import ExecutionStopped, TabletopSim
    from dino_vla.sim.scene import random_scene

    monkeypatch.chdir(tmp_path)   # MuJoCo writes MUJOCO_LOG.TXT on warnings
    with TabletopSim(random_scene(3, target="cup", n_distractors=0), 160, 120) as sim:
        sim.settle()
        grasp = sim.reference_grasp("cup")

        def stop_after_half_a_second(sim_s: float) -> None:
            if sim_s > 0.5:
                raise ExecutionStopped("a STOP command arrived")

        outcome = sim.execute(grasp, step_hook=stop_after_half_a_second)
        assert not outcome.success and outcome.lifted_object is None
        assert outcome.reason == "cancelled: a STOP command arrived" and outcome.sim_s < 1.0
        assert outcome.finger_opening > 0.05   # opened
