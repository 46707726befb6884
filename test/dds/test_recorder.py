"""Recording demonstrations from ROS topics: which object a commanded grasp was for (known answers), and the
recorder node over real DDS, fed a real MuJoCo frame and synthetic commands and outcomes, read back with the
dataset reader the trainer uses."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header, String

from dino_vla.config import CAMERA_POSE_IN_BASE, config_dir
from dino_vla.geometry.localise import NoPointsError
from dino_vla.geometry.transforms import transform_from_pose
from dino_vla.graph import RECORDER, CameraTopics
from dino_vla.msg import GraspCommand, GraspOutcome, SegmentationMasks
from dino_vla.dataset.format import Dataset
from dino_vla.dataset.recording import grasped_object
from dino_vla.ros.conversions import numpy_to_image
from dino_vla.ros.launcher import start_graph
from dino_vla.ros.messages import camera_info_msg, detections_to_msg, grasp_to_msg, masks_to_msg, stamp_ns
from dino_vla.ros.recorder_node import SOURCE
from dino_vla.sim.scene import CAMERA_FRAME
from dino_vla.types import Grasp, Object3D
from support.sim_frames import settled_frame

CONFIG = [str(config_dir() / "policy.yaml")]


def box_object(centre_xy, size_xy, yaw=0.0, frame="base_link") -> Object3D:
    """Points filling an upright box standing on z = 0.4."""
    rng = np.random.default_rng(0)
    local = rng.uniform(-0.5, 0.5, (400, 3)) * [*size_xy, 0.1]
    c, s = np.cos(yaw), np.sin(yaw)
    points = local @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) + [*centre_xy, 0.45]
    return Object3D("thing", 1.0, frame, points.astype(np.float32), np.array([*centre_xy, 0.45]), np.eye(3),
                    np.array([*size_xy, 0.1]))


def grasp_at(x, y, frame="base_link") -> Grasp:
    return Grasp(np.array([x, y, 0.45]), np.array([0.0, 0.0, -1.0]), 0.0, 0.05, 0.9, "thing", frame)


def test_the_grasped_object_is_the_one_whose_footprint_holds_the_tcp():
    objects = [box_object((0.0, 0.0), (0.04, 0.20)), NoPointsError("no depth"),
               box_object((0.2, 0.1), (0.06, 0.06), yaw=0.7)]
    assert grasped_object(objects, grasp_at(0.0, 0.09)) == 0          # inside the long thin box
    assert grasped_object(objects, grasp_at(0.2, 0.1)) == 2
    assert grasped_object(objects, grasp_at(0.05, 0.0)) is None        # beside the thin box: 3 cm + 1 cm margin off
    assert grasped_object(objects, grasp_at(0.025, 0.0)) == 0          # within the margin
    assert grasped_object(objects, grasp_at(0.025, 0.0), margin_m=0.0) is None
    assert grasped_object([], grasp_at(0.0, 0.0)) is None


def test_of_overlapping_footprints_the_nearest_centre_wins():
    objects = [box_object((0.0, 0.0), (0.2, 0.2)), box_object((0.05, 0.0), (0.04, 0.04))]
    assert grasped_object(objects, grasp_at(0.05, 0.0)) == 1
    assert grasped_object(objects, grasp_at(-0.05, 0.0)) == 0


def test_objects_in_another_frame_are_refused():
    with pytest.raises(ValueError, match="camera"):
        grasped_object([box_object((0, 0), (0.1, 0.1), frame="camera")], grasp_at(0.0, 0.0))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    s = settled_frame(5, tmp_path_factory.mktemp("mujoco"))
    return {"frame": s.frame, "detections": s.detections, "masks": s.masks, "intrinsics": s.intrinsics,
            "cup": s.object_positions["cup"], "camera_pose": s.camera_pose}


def _command(stamp: Header, position, instruction: str, dry_run: bool) -> GraspCommand:
    header = Header(stamp=stamp.stamp, frame_id="base_link")
    grasp = Grasp(np.asarray(position, np.float64), np.array([0.0, 0.0, -1.0]), 0.4, 0.08, 0.8, "cup", "base_link")
    return grasp_to_msg(header, grasp, dry_run, instruction, "geometric planner")


def test_commands_and_outcomes_become_episodes_of_a_dataset(dds_env, scene, tmp_path):
    out = tmp_path / "demos"
    log = open(tmp_path / "recorder.log", "w+")
    node = rclpy.create_node("recorder_probe")
    camera = CameraTopics()
    pubs = {"image": node.create_publisher(Image, camera.image, 5),
            "depth": node.create_publisher(Image, camera.depth, 5),
            "info": node.create_publisher(CameraInfo, camera.camera_info, 5),
            "masks": node.create_publisher(SegmentationMasks, "/masks", 10),
            "command": node.create_publisher(GraspCommand, "/grasp_command", 10),
            "outcome": node.create_publisher(GraspOutcome, "/grasp_outcome", 10),
            "instruction": node.create_publisher(String, "/instruction", QoSProfile(
                depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))}
    running = start_graph(CONFIG, dds_env, specs=(RECORDER,), stdout=log, stderr=subprocess.STDOUT, node_params={
        "recorder": {"output_dir": str(out), "outcome_timeout_s": 1.0, "reliability": "reliable"}})

    def spin(seconds: float, until=lambda: False) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not until():
            assert running.failed() is None, f"recorder exited: {running.failed()}"
            rclpy.spin_once(node, timeout_sec=0.05)
        return until()

    try:
        assert spin(60, lambda: all(p.get_subscription_count() > 0 for p in pubs.values())), "recorder not subscribed"
        pubs["instruction"].publish(String(data="grab the bottle"))
        s = scene
        headers = []
        for sec in (101, 102, 103):
            header = Header(frame_id=CAMERA_FRAME)
            header.stamp.sec, header.stamp.nanosec = sec, 500
            pubs["image"].publish(numpy_to_image(s["frame"].rgb, "rgb8", header))
            pubs["depth"].publish(numpy_to_image(s["frame"].depth, "32FC1", header))
            pubs["info"].publish(camera_info_msg(header, s["intrinsics"]))
            pubs["masks"].publish(masks_to_msg(header, detections_to_msg(header, s["detections"], "pick up the cup"),
                                               s["detections"], s["masks"], "simulator ground truth"))
            headers.append(header)
        spin(1.0)
        cup = [*s["cup"][:2], 0.45]
        far = (0.44, 0.34, 0.6)
        unmatched = Header()
        unmatched.stamp.sec = 99
        pubs["command"].publish(_command(headers[1], cup, "pick up the cup", dry_run=False))   # -> episode 0
        pubs["command"].publish(_command(headers[0], cup, "pick up the cup", dry_run=True))    # dry run: skipped
        pubs["command"].publish(_command(unmatched, cup, "pick up the cup", dry_run=False))    # no such frame
        pubs["command"].publish(_command(headers[2], far, "", dry_run=False))   # no outcome -> episode 1, timeout
        spin(0.5)
        pubs["outcome"].publish(GraspOutcome(header=unmatched, success=True))   # pairs with nothing recorded
        pubs["outcome"].publish(GraspOutcome(header=_command(headers[1], cup, "", False).header, success=True,
                                             lifted_object="cup", lifted_m=0.149))
        spin(2.0)
    finally:
        node.destroy_node()
        running.stop()   # SIGINT: a clean close rewrites meta/info.json
    log.seek(0)
    text = log.read()
    assert "not recording dry-run commands" in text and "not recording the command stamped 99.000" in text, text
    ds = Dataset(out)
    assert ds.info["source"] == SOURCE and ds.info["episodes"] == 2 and ds.num_frames == 2
    first, second = ds.episodes
    names = s["detections"].phrases
    assert (first.frame_index, first.instruction, first.success) == (0, "pick up the cup", True)
    assert first.target_object == names.index("cup")
    np.testing.assert_allclose(first.grasp_position, cup)
    assert (first.grasp_yaw, first.grasp_width) == pytest.approx((0.4, 0.08))
    assert first.extra["source"] == "geometric planner" and first.extra["lifted_object"] == "cup"
    assert first.extra["object_class"] == "cup" and first.extra["dry_run"] is False
    # no command instruction: the one on `instruction`; no outcome: success unknown
    assert (second.frame_index, second.instruction, second.success, second.target_object) == (
        1, "grab the bottle", None, None)
    assert "none within 1 s" in second.extra["outcome"]
    frame = ds.frame(first.frame_index)
    assert frame.stamp_ns == stamp_ns(headers[1]) and frame.objects == names
    np.testing.assert_array_equal(frame.rgb, s["frame"].rgb)
    np.testing.assert_array_equal(frame.labels, s["masks"].label_image())
    truth = np.nan_to_num(s["frame"].depth, nan=0.0)
    assert np.abs(frame.depth_m - truth).max() <= 0.0006
    expected = transform_from_pose(CAMERA_POSE_IN_BASE, "base_link", CAMERA_FRAME)
    np.testing.assert_allclose(frame.camera_to_base.rotation, expected.rotation, atol=1e-9)
    np.testing.assert_allclose(frame.camera_to_base.translation, expected.translation, atol=1e-9)
    assert (frame.camera_to_base.parent, frame.camera_to_base.child) == ("base_link", CAMERA_FRAME)
    np.testing.assert_allclose(frame.camera_to_base.translation, scene["camera_pose"].translation, atol=1e-3)

    # a second recorder must not write over this dataset, and one without output_dir must not start
    runs = [subprocess.Popen([sys.executable, "-m", RECORDER.module, "--ros-args", *extra],
                             env={**os.environ, **dds_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for extra in (["-p", f"output_dir:={out}"], [])]
    (_, existing), (_, missing) = (run.communicate(timeout=60) for run in runs)
    assert [run.returncode for run in runs] == [1, 1]
    assert "already holds a dataset" in existing and "append" in existing
    assert "output_dir is required" in missing and "Traceback" not in existing + missing
