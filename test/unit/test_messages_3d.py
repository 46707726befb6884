"""Rotations <-> quaternions (geometry.transforms) and the 3D messages of dino_vla.ros.messages: grasps,
point clouds, segmentation masks, CameraInfo, 3D detections and RViz markers. Message classes only, no DDS."""
import math

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, PointCloud2, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from dino_vla.geometry.transforms import (matrix_from_quaternion, pose_from_transform, quaternion_from_matrix,
                                          transform_from_pose)
from dino_vla.msg import DetectionArray, GraspCommand
from dino_vla.ros.messages import (camera_info_msg, cloud_from_msg, cloud_to_msg, detections_to_msg, grasp_from_msg,
                                   grasp_rotation, grasp_to_msg, intrinsics_from_msg, markers_msg, masks_from_msg,
                                   masks_to_msg, objects_to_msg, provenance_from_msg, stamp_ns)
from dino_vla.types import (DETECTED, TRACKED, CameraIntrinsics, Detections, Grasp, Masks, Object3D, Provenance,
                            RigidTransform)

RNG = np.random.default_rng(7)
CAMERA_FRAME = "camera_color_optical_frame"


def header(frame=CAMERA_FRAME, sec=12, nanosec=345) -> Header:
    return Header(frame_id=frame, stamp=Time(sec=sec, nanosec=nanosec))


def axis_angle(axis, angle) -> np.ndarray:
    """Rodrigues' formula: a rotation matrix built without quaternions."""
    axis = np.asarray(axis, np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def random_axis_angles(n):
    axes = RNG.normal(size=(n, 3))
    return [(a, angle) for a, angle in zip(axes, RNG.uniform(-math.pi, math.pi, n))]


# 180 degrees about x, y, z (trace -1: the naive w = sqrt(1 + trace) / 2 formula divides by 0), other half
# turns, near half turns, the identity and small angles
SPECIAL = ([(axis, math.pi) for axis in np.eye(3)]
           + [(axis, math.pi) for axis in ([1, 1, 0], [0, 1, -1], [1, -2, 3], [-1, -1, -1])]
           + [(axis, math.pi - 1e-7) for axis in np.eye(3)]
           + [(axis, a) for axis in np.eye(3) for a in (-math.pi / 2, math.pi / 2, 1e-9)]
           + [([0, 0, 1], 0.0)])
ROTATIONS = SPECIAL + random_axis_angles(200)


def assert_rotation(m):
    np.testing.assert_allclose(m.T @ m, np.eye(3), atol=1e-12)
    assert np.linalg.det(m) == pytest.approx(1.0, abs=1e-12)


# ---- transforms -------------------------------------------------------------------------------------------

def test_quaternion_matrix_round_trip():
    for axis, angle in ROTATIONS:
        m = axis_angle(axis, angle)
        q = quaternion_from_matrix(m)
        assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-12)
        assert q[3] >= 0
        unit = np.asarray(axis, np.float64) / np.linalg.norm(axis)
        expected = np.array([*unit * math.sin(angle / 2), math.cos(angle / 2)])
        # q and -q are the same rotation; w >= 0 picks one except at w = 0
        assert min(np.abs(q - expected).max(), np.abs(q + expected).max()) < 1e-9, (axis, angle, q)
        back = matrix_from_quaternion(q)
        assert_rotation(back)
        np.testing.assert_allclose(back, m, atol=1e-12)


@pytest.mark.parametrize("axis", range(3))
def test_half_turns_about_the_axes(axis):
    m = np.diag([-1.0, -1.0, -1.0])
    m[axis, axis] = 1.0
    q = quaternion_from_matrix(m)
    np.testing.assert_allclose(np.abs(q), np.eye(4)[axis], atol=1e-15)
    np.testing.assert_allclose(matrix_from_quaternion(q), m, atol=1e-15)


def test_matrix_from_quaternion_agrees_with_rodrigues():
    for axis, angle in random_axis_angles(50):
        unit = axis / np.linalg.norm(axis)
        q = [*unit * math.sin(angle / 2), math.cos(angle / 2)]
        np.testing.assert_allclose(matrix_from_quaternion(q), axis_angle(axis, angle), atol=1e-12)
        np.testing.assert_allclose(matrix_from_quaternion(-np.asarray(q)), axis_angle(axis, angle), atol=1e-12)


@pytest.mark.parametrize("scale", [1e-3, 0.5, 2.0, 1e4])
def test_non_unit_quaternion_is_normalised(scale):
    for axis, angle in random_axis_angles(10):
        unit = axis / np.linalg.norm(axis)
        q = np.array([*unit * math.sin(angle / 2), math.cos(angle / 2)])
        m = matrix_from_quaternion(q * scale)
        assert_rotation(m)
        np.testing.assert_allclose(m, matrix_from_quaternion(q), atol=1e-12)


@pytest.mark.parametrize("q", [(0, 0, 0, 0), (1e-9, 0, 0, 0), (float("nan"), 0, 0, 1), (0, float("inf"), 0, 1)])
def test_degenerate_quaternion_rejected(q):
    with pytest.raises(ValueError, match="quaternion"):
        matrix_from_quaternion(q)


def test_pose_transform_round_trip():
    for axis, angle in ROTATIONS[:60]:
        m = axis_angle(axis, angle)
        t = RNG.uniform(-2, 2, 3)
        q = quaternion_from_matrix(m)
        pose = (*t, *q)
        tf = transform_from_pose(pose, "base_link", CAMERA_FRAME)
        assert (tf.parent, tf.child) == ("base_link", CAMERA_FRAME)
        np.testing.assert_allclose(tf.rotation, m, atol=1e-12)
        np.testing.assert_allclose(tf.translation, t)
        back = pose_from_transform(tf)
        assert len(back) == 7 and all(type(v) is float for v in back)
        np.testing.assert_allclose(back[:3], t)
        same = np.abs(np.subtract(back[3:], q)).max() < 1e-9 or np.abs(np.add(back[3:], q)).max() < 1e-9
        assert same, (back, q)
    # a pose with w < 0 comes back as the same rotation with w >= 0
    tf = transform_from_pose((0.1, 0.2, 0.3, 0.0, 0.6, 0.0, -0.8), "a", "b")
    np.testing.assert_allclose(pose_from_transform(tf), (0.1, 0.2, 0.3, 0.0, -0.6, 0.0, 0.8), atol=1e-12)


@pytest.mark.parametrize("pose", [(0, 0, 0, 0, 0, 1), (0, 0, 0, 0, 0, 0, 1, 0), ()])
def test_transform_from_pose_needs_seven_numbers(pose):
    with pytest.raises(ValueError, match="x, y, z, qx, qy, qz, qw"):
        transform_from_pose(pose, "a", "b")


def test_inverse_composes_to_identity():
    points = RNG.normal(size=(20, 3))
    for axis, angle in ROTATIONS[::10]:
        tf = RigidTransform(axis_angle(axis, angle), RNG.uniform(-1, 1, 3), "base_link", CAMERA_FRAME)
        inv = tf.inverse()
        assert (inv.parent, inv.child) == (CAMERA_FRAME, "base_link")
        np.testing.assert_allclose(inv.rotation @ tf.rotation, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(inv.rotation @ tf.translation + inv.translation, 0, atol=1e-12)
        np.testing.assert_allclose(tf.apply(inv.apply(points)), points, atol=1e-12)
        np.testing.assert_allclose(inv.apply(tf.apply(points)), points, atol=1e-12)
        np.testing.assert_allclose(inv.inverse().translation, tf.translation, atol=1e-12)
        assert not np.allclose(tf.apply(points), points)


# ---- grasps -----------------------------------------------------------------------------------------------

YAWS = list(np.linspace(-math.pi, math.pi, 49)[1:]) + [math.pi, -math.pi + 1e-6, 1e-12, -1e-12, math.pi / 2,
                                                        -math.pi / 2]


def make_grasp(yaw, approach=(0.0, 0.0, -1.0), frame="base_link") -> Grasp:
    return Grasp(np.array([0.12, -0.05, 0.46]), np.asarray(approach, np.float64), float(yaw), 0.083, 0.61,
                 "red cup", frame)


def yaw_error(a, b) -> float:
    return abs((a - b + math.pi) % (2 * math.pi) - math.pi)


@pytest.mark.parametrize("dry_run", [True, False])
def test_grasp_round_trip(dry_run):
    for yaw in YAWS:
        grasp = make_grasp(yaw)
        msg = grasp_to_msg(header("base_link"), grasp, dry_run, instruction="grab the red cup", source="policy x")
        assert isinstance(msg, GraspCommand)
        assert msg.command == GraspCommand.GRASP and msg.dry_run is dry_run
        assert (msg.instruction, msg.source, msg.object_class) == ("grab the red cup", "policy x", "red cup")
        assert msg.header.frame_id == "base_link" and msg.header.stamp.sec == 12
        back = grasp_from_msg(msg)
        assert yaw_error(back.yaw, yaw) < 1e-9, (yaw, back.yaw)
        assert -math.pi <= back.yaw <= math.pi
        np.testing.assert_allclose(back.position, grasp.position)
        np.testing.assert_allclose(back.approach, grasp.approach)
        assert (back.width, back.score, back.phrase, back.frame) == (0.083, 0.61, "red cup", "base_link")


def test_grasp_header_must_match_its_frame():
    with pytest.raises(ValueError, match="camera_color_optical_frame"):
        grasp_to_msg(header(CAMERA_FRAME), make_grasp(0.3), dry_run=True)


@pytest.mark.parametrize("yaw", YAWS[::4])
def test_tool_frame_rotation(yaw):
    grasp = make_grasp(yaw)
    r = grasp_rotation(grasp)
    assert_rotation(r)
    np.testing.assert_allclose(np.cross(r[:, 0], r[:, 1]), r[:, 2], atol=1e-12)   # right-handed
    np.testing.assert_allclose(r[:, 2], [0.0, 0.0, -1.0], atol=1e-12)              # z: approach
    np.testing.assert_allclose(r[:, 1], [-math.sin(yaw), math.cos(yaw), 0.0], atol=1e-12)  # y: closing axis
    # the message's orientation is this rotation
    q = grasp_to_msg(header("base_link"), grasp, True).grasp_pose.orientation
    np.testing.assert_allclose(matrix_from_quaternion((q.x, q.y, q.z, q.w)), r, atol=1e-12)


def test_tool_frame_of_a_tilted_approach():
    approach = np.array([0.3, 0.0, -1.0]) / math.hypot(0.3, 1.0)
    for yaw in YAWS[::6]:
        r = grasp_rotation(make_grasp(yaw, approach))
        assert_rotation(r)
        np.testing.assert_allclose(r[:, 2], approach, atol=1e-12)
        closing = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
        # y is the closing axis made perpendicular to the approach: same side, in the plane of the two
        assert r[:, 1] @ closing > 0
        assert abs(np.linalg.det(np.stack([r[:, 1], closing, approach]))) < 1e-12


# ---- point clouds -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 1000])
def test_cloud_round_trip(n):
    points = RNG.uniform(-3, 3, (n, 3))
    msg = cloud_to_msg(header(), points)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1), ("z", 8, PointField.FLOAT32, 1)]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, n, 12, 12 * n)
    assert len(msg.data) == 12 * n and not msg.is_bigendian and msg.header.frame_id == CAMERA_FRAME
    back = cloud_from_msg(msg)
    assert back.dtype == np.float32 and back.shape == (n, 3)
    np.testing.assert_array_equal(back, points.astype(np.float32))


def test_cloud_with_more_fields_per_point():
    """x, y, z first and an rgb field after them (point_step 16), as RGB-D drivers publish."""
    points = RNG.uniform(-1, 1, (5, 3)).astype(np.float32)
    raw = np.zeros((5, 4), np.float32)
    raw[:, :3] = points
    raw[:, 3] = 123.0
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
              for i, n in enumerate(("x", "y", "z", "rgb"))]
    msg = PointCloud2(header=header(), height=1, width=5, fields=fields, point_step=16, row_step=80,
                      data=raw.tobytes(), is_dense=True)
    np.testing.assert_array_equal(cloud_from_msg(msg), points)


def test_cloud_with_other_fields_rejected():
    msg = cloud_to_msg(header(), np.zeros((2, 3)))
    msg.fields[2].datatype = PointField.FLOAT64
    with pytest.raises(ValueError, match="float32 x, y, z"):
        cloud_from_msg(msg)
    msg = cloud_to_msg(header(), np.zeros((2, 3)))
    msg.fields = [msg.fields[1], msg.fields[0], msg.fields[2]]
    with pytest.raises(ValueError, match="float32 x, y, z"):
        cloud_from_msg(msg)


# ---- segmentation masks -----------------------------------------------------------------------------------

def overlapping_masks():
    """Three detections on a 40 x 50 image; 0 and 1 overlap, 1 and 2 overlap, 0 and 2 do not."""
    h, w = 40, 50
    masks = np.zeros((3, h, w), bool)
    masks[0, 5:20, 5:25] = True
    masks[1, 15:30, 20:40] = True
    masks[2, 25:38, 35:48] = True
    boxes = np.array([[5, 5, 25, 20], [20, 15, 40, 30], [35, 25, 48, 38]], np.float32)
    detections = Detections(boxes, np.array([0.9, 0.5, 0.7], np.float32), ("red cup", "block", "red cup"), (h, w))
    return detections, Masks(masks, np.array([0.95, 0.85, 0.75], np.float32))


def test_masks_round_trip():
    detections, masks = overlapping_masks()
    instruction = "pick up the red cup next to the block"
    detections_msg = detections_to_msg(header(), detections, instruction)
    msg = masks_to_msg(header(), detections_msg, detections, masks, "simulator ground truth")
    assert msg.source == "simulator ground truth" and msg.instruction == instruction
    assert msg.labels.encoding == "mono8" and (msg.labels.height, msg.labels.width) == (40, 50)
    assert msg.header.frame_id == CAMERA_FRAME
    back_detections, back_masks = masks_from_msg(msg)
    assert back_detections.phrases == detections.phrases
    assert back_detections.image_size == (40, 50)
    np.testing.assert_allclose(back_detections.boxes, detections.boxes, atol=1e-4)
    np.testing.assert_array_equal(back_detections.scores, detections.scores)
    np.testing.assert_array_equal(back_masks.scores, masks.scores)
    assert back_masks.masks.dtype == np.bool_ and back_masks.masks.shape == masks.masks.shape
    # where one mask alone covers a pixel it comes back unchanged
    alone = masks.masks.sum(0) == 1
    for i in range(3):
        np.testing.assert_array_equal(back_masks.masks[i] & alone, masks.masks[i] & alone)
    # overlaps go to the higher-scoring detection: 0 (0.9) over 1 (0.5), 2 (0.7) over 1
    overlap01 = masks.masks[0] & masks.masks[1]
    overlap12 = masks.masks[1] & masks.masks[2]
    assert overlap01.any() and overlap12.any()
    assert back_masks.masks[0][overlap01].all() and not back_masks.masks[1][overlap01].any()
    assert back_masks.masks[2][overlap12].all() and not back_masks.masks[1][overlap12].any()
    # every pixel has at most one owner, and no pixel is invented
    assert back_masks.masks.sum(0).max() == 1
    np.testing.assert_array_equal(back_masks.masks.any(0), masks.masks.any(0))


def test_masks_overlap_owner_follows_scores_not_order():
    detections, masks = overlapping_masks()
    low_first = Detections(detections.boxes, np.array([0.2, 0.8, 0.7], np.float32), detections.phrases,
                           detections.image_size)
    msg = masks_to_msg(header(), detections_to_msg(header(), low_first), low_first, masks, "sam")
    _, back = masks_from_msg(msg)
    overlap01 = masks.masks[0] & masks.masks[1]
    overlap12 = masks.masks[1] & masks.masks[2]
    assert back.masks[1][overlap01].all() and not back.masks[0][overlap01].any()
    assert back.masks[1][overlap12].all() and not back.masks[2][overlap12].any()


def test_masks_round_trip_many_and_none():
    h, w = 20, 20
    n = 300    # more labels than mono8 holds
    masks = np.zeros((n, h, w), bool)
    masks[np.arange(n), np.arange(n) // w, np.arange(n) % w] = True
    boxes = np.array([[i % w, i // w, i % w + 1, i // w + 1] for i in range(n)], np.float32)
    detections = Detections(boxes, np.linspace(1, 0.1, n).astype(np.float32), tuple(f"p{i}" for i in range(n)), (h, w))
    msg = masks_to_msg(header(), detections_to_msg(header(), detections), detections,
                       Masks(masks, np.ones(n, np.float32)), "sam")
    assert msg.labels.encoding == "16UC1"
    back_detections, back = masks_from_msg(msg)
    np.testing.assert_array_equal(back.masks, masks)
    assert back_detections.phrases == detections.phrases
    empty = Detections.empty((h, w))
    msg = masks_to_msg(header(), detections_to_msg(header(), empty, "find the cup"), empty,
                       Masks(np.zeros((0, h, w), bool), np.zeros(0, np.float32)), "sam")
    back_detections, back = masks_from_msg(msg)
    assert len(back_detections) == 0 and back.masks.shape == (0, h, w) and msg.instruction == "find the cup"


def test_provenance_travels_with_detections_and_their_masks():
    detections, masks = overlapping_masks()
    now = header(sec=1700000012, nanosec=345)
    # seven frames after a detection 0.7 s earlier, at a time whose nanoseconds a float64 of seconds would round
    tracked = Provenance(TRACKED, 7, stamp_ns(now) - 700_000_001, stamp_ns(now), 0.75)
    detections_msg = detections_to_msg(now, detections, "pick up the red cup", tracked)
    assert detections_msg.provenance == TRACKED and detections_msg.frames_since_detection == 7
    assert detections_msg.detection_age_s == pytest.approx(0.700000001)
    assert (detections_msg.detection_stamp.sec, detections_msg.detection_stamp.nanosec) == (1700000011, 300000344)
    assert detections_msg.tracking_confidence == pytest.approx(0.75)
    assert provenance_from_msg(detections_msg) == tracked
    msg = masks_to_msg(now, detections_msg, detections, masks, "sam")
    assert (msg.provenance, msg.frames_since_detection, msg.detection_stamp, msg.tracking_confidence) == (
        TRACKED, 7, detections_msg.detection_stamp, detections_msg.tracking_confidence)
    assert msg.detection_age_s == detections_msg.detection_age_s


def test_detections_without_provenance_were_detected_on_their_image():
    detections, _ = overlapping_masks()
    msg = detections_to_msg(header(), detections)
    assert (msg.provenance, msg.frames_since_detection, msg.detection_age_s, msg.tracking_confidence) == (
        DETECTED, 0, 0.0, 1.0)
    assert msg.detection_stamp == msg.header.stamp
    now = stamp_ns(header())
    assert provenance_from_msg(msg) == Provenance(DETECTED, 0, now, now)
    # a publisher that predates the fields leaves them empty: its detections are taken as detected
    assert provenance_from_msg(DetectionArray(header=header())) == Provenance(DETECTED, 0, now, now)


# ---- CameraInfo -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [CameraIntrinsics(615.2, 614.8, 319.5, 241.25, 640, 480),
                               CameraIntrinsics(430.0, 430.0, 639.5, 359.5, 1280, 720)])
def test_camera_info_round_trip(k):
    msg = camera_info_msg(header(), k)
    assert msg.header.frame_id == CAMERA_FRAME
    np.testing.assert_allclose(np.reshape(msg.k, (3, 3)), [[k.fx, 0, k.cx], [0, k.fy, k.cy], [0, 0, 1]])
    np.testing.assert_allclose(np.reshape(msg.p, (3, 4))[:, :3], np.reshape(msg.k, (3, 3)))
    assert intrinsics_from_msg(msg) == k


def test_camera_info_without_intrinsics_rejected():
    with pytest.raises(ValueError, match="no usable intrinsics"):
        intrinsics_from_msg(CameraInfo(header=header(), width=640, height=480))
    msg = camera_info_msg(header(), CameraIntrinsics(600.0, 600.0, 320.0, 240.0, 640, 480))
    msg.width = 0
    with pytest.raises(ValueError, match="no usable intrinsics"):
        intrinsics_from_msg(msg)


# ---- 3D detections and markers ----------------------------------------------------------------------------

def objects():
    detections = Detections(np.array([[10, 20, 60, 90], [100, 50, 180, 120]], np.float32),
                            np.array([0.8, 0.6], np.float32), ("red cup", "block"), (480, 640))
    sources = detections_to_msg(header(), detections, "pick up the red cup").detections
    out = []
    for i, (axis, angle) in enumerate((([1, 2, 3], 2.5), ([0, 0, 1], math.pi))):
        obj = Object3D(detections.phrases[i], float(detections.scores[i]), "base_link",
                       RNG.normal(size=(40, 3)).astype(np.float32), np.array([0.1 * i, -0.2, 0.45 + i / 10]),
                       axis_angle(axis, angle), np.array([0.09, 0.07, 0.10 - i / 100]))
        out.append((sources[i], obj))
    return out


def test_objects_to_msg():
    pairs = objects()
    base = header("base_link", sec=99)
    msg = objects_to_msg(base, pairs, "pick up the red cup")
    assert msg.header.frame_id == "base_link" and msg.header.stamp.sec == 99
    assert msg.instruction == "pick up the red cup" and len(msg.detections) == 2
    for d, (source, obj) in zip(msg.detections, pairs):
        assert d.has_pose and d.header.frame_id == "base_link" and d.header.stamp.sec == 99
        p, q = d.pose.position, d.pose.orientation
        np.testing.assert_allclose([p.x, p.y, p.z], obj.centroid)
        np.testing.assert_allclose(matrix_from_quaternion((q.x, q.y, q.z, q.w)), obj.rotation, atol=1e-12)
        assert math.isclose(q.x ** 2 + q.y ** 2 + q.z ** 2 + q.w ** 2, 1.0, abs_tol=1e-12)
        np.testing.assert_allclose([d.size.x, d.size.y, d.size.z], obj.extent)
        # the 2D box, phrase, score and id of the source detection are kept
        assert (d.id, d.class_id, d.score) == (source.id, source.class_id, source.score)
        assert (d.center_x, d.center_y, d.size_x, d.size_y) == (source.center_x, source.center_y, source.size_x,
                                                                source.size_y)
        # and the source is left as it was
        assert not source.has_pose and source.header.frame_id == CAMERA_FRAME
    assert [d.center_x for d in msg.detections] == [35.0, 140.0]
    assert [d.size_y for d in msg.detections] == [70.0, 70.0]


def test_markers_msg():
    pairs = objects()
    base = header("base_link")
    markers = markers_msg(base, pairs, lifetime_s=1.5).markers
    assert len(markers) == 1 + 2 * len(pairs)
    assert markers[0].action == Marker.DELETEALL
    for i, (source, obj) in enumerate(pairs):
        cube, text = markers[1 + 2 * i], markers[2 + 2 * i]
        assert cube.type == Marker.CUBE and text.type == Marker.TEXT_VIEW_FACING
        assert cube.action == Marker.ADD and text.action == Marker.ADD
        assert cube.id == i and text.id == i and cube.ns != text.ns
        assert cube.header.frame_id == "base_link" and text.header.frame_id == "base_link"
        p, q = cube.pose.position, cube.pose.orientation
        np.testing.assert_allclose([p.x, p.y, p.z], obj.centroid)
        np.testing.assert_allclose(matrix_from_quaternion((q.x, q.y, q.z, q.w)), obj.rotation, atol=1e-12)
        np.testing.assert_allclose([cube.scale.x, cube.scale.y, cube.scale.z], obj.extent)
        assert source.class_id in text.text and f"{source.score:.2f}" in text.text
        assert text.pose.position.z > obj.centroid[2] + obj.extent.max() / 2
        assert (cube.lifetime.sec, cube.lifetime.nanosec) == (1, 500_000_000)
    assert [m.action for m in markers_msg(base, []).markers] == [Marker.DELETEALL]
