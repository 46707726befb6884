"""Top-down grasps of table-top objects seen from one camera (base_link: z up, table at z = 0.40)."""
import numpy as np
import pytest

from dino_vla.geometry import DepthFrame, GraspPlanner, GraspRefused, GripperSpec, Workspace, localise
from dino_vla.types import Object3D
from test_geometry import CAMERA_FRAME, CAMERAS, INTRINSICS, box, cylinder, render

TABLE_Z = 0.40
CAMERA = np.array([0.55, 0.0, 0.95])   # looking at (0, 0, 0.40), 45 degrees down
RNG = np.random.default_rng(0)


def seen(points: np.ndarray, normals: np.ndarray, camera=CAMERA, noise_m=0.001) -> np.ndarray:
    """The surface points of a convex object that face the camera, with depth-like noise."""
    facing = np.einsum("ij,ij->i", normals, camera - points) > 0
    return points[facing] + RNG.normal(scale=noise_m, size=(int(facing.sum()), 3))


def cup_cloud(xy=(0.0, 0.0), radius=0.035, height=0.10, camera=CAMERA, spacing=0.002) -> np.ndarray:
    """What one RGB-D view sees of a closed cylinder standing on the table: the front half-shell and the top."""
    angles = np.arange(0, 2 * np.pi, spacing / radius)
    zs = np.arange(TABLE_Z, TABLE_Z + height, spacing)
    a, z = (g.ravel() for g in np.meshgrid(angles, zs))
    wall = np.stack([xy[0] + radius * np.cos(a), xy[1] + radius * np.sin(a), z], axis=1)
    wall_normals = np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], axis=1)
    gx, gy = (g.ravel() for g in np.meshgrid(*[np.arange(-radius, radius, spacing)] * 2))
    inside = gx ** 2 + gy ** 2 <= radius ** 2
    lid = np.stack([xy[0] + gx[inside], xy[1] + gy[inside], np.full(inside.sum(), TABLE_Z + height)], axis=1)
    normals = np.concatenate([wall_normals, np.tile([0.0, 0.0, 1.0], (len(lid), 1))])
    return seen(np.concatenate([wall, lid]), normals, camera)


def box_cloud(xy, yaw, size, camera=CAMERA, spacing=0.002) -> np.ndarray:
    """The camera-facing faces of a box standing on the table, turned by yaw about z."""
    c, s = np.cos(yaw), np.sin(yaw)
    turn = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    size = np.asarray(size)
    grid = np.stack([g.ravel() for g in np.meshgrid(*[np.arange(-h, h + 1e-9, spacing) for h in size / 2])], axis=1)
    on_face = np.isclose(np.abs(grid), size / 2)
    on_face[:, 2] &= grid[:, 2] > 0                  # no bottom face: it lies on the table
    normals = np.where(on_face, np.sign(grid), 0.0)
    keep = on_face.any(axis=1)
    points = grid[keep] @ turn.T + [xy[0], xy[1], TABLE_Z + size[2] / 2]
    return seen(points, normals[keep] @ turn.T, camera)


def as_object(points, phrase="cup", frame="base_link") -> Object3D:
    """An Object3D carrying only points that matter to the planner (it re-boxes them itself)."""
    return Object3D(phrase, 0.9, frame, points.astype(np.float32), points.mean(axis=0), np.eye(3), np.zeros(3))


PLANNER = GraspPlanner(GripperSpec(), Workspace())


def closing_direction(grasp) -> np.ndarray:
    return np.array([-np.sin(grasp.yaw), np.cos(grasp.yaw)])


def test_cup_seen_from_one_side():
    points = cup_cloud(xy=(0.05, -0.1))
    grasp = PLANNER.plan(as_object(points))
    assert np.linalg.norm(grasp.position[:2] - [0.05, -0.1]) < 0.003     # the axis, not the half-shell's middle
    assert abs(points[:, 0].mean() - 0.05) > 0.01                          # which is well off it
    # extremes of 1 mm noise widen the footprint by a few mm: a wider opening, never a narrower one
    assert 0.07 + 0.01 <= grasp.width < 0.07 + 0.01 + 0.008
    assert grasp.position[2] == pytest.approx(TABLE_Z + 0.10 - 0.04, abs=0.005)   # 0.8 finger length below the top
    assert grasp.position[2] > TABLE_Z + 0.005
    assert -np.pi / 2 < grasp.yaw <= np.pi / 2
    np.testing.assert_array_equal(grasp.approach, [0.0, 0.0, -1.0])
    assert grasp.frame == "base_link" and grasp.phrase == "cup"
    assert 0 < grasp.score < 1


@pytest.mark.parametrize("camera_name", sorted(CAMERAS))
def test_rendered_cup_localised_then_planned_hits_the_axis(camera_name):
    """The whole geometric path: ray-cast depth -> localise (camera frame) -> base_link -> grasp."""
    camera = CAMERAS[camera_name]
    axis = np.array([0.02, -0.03])
    depth, mask = render(camera, cylinder(axis, 0.035, 0.10))
    obj = localise(DepthFrame(depth, INTRINSICS, CAMERA_FRAME), mask, "cup", 0.9).transformed(camera)
    grasp = PLANNER.plan(obj)
    assert np.linalg.norm(grasp.position[:2] - axis) < 0.01
    assert np.linalg.norm(grasp.position[:2] - axis) < 0.002      # what it actually achieves
    assert grasp.width == pytest.approx(0.08, abs=0.003)
    assert grasp.position[2] == pytest.approx(0.46, abs=0.003)


@pytest.mark.parametrize("yaw_deg", [0, 15, 30, 45, 60, 90, 120, 135, 170, -30, -80])
def test_box_fingers_close_across_its_narrow_side(yaw_deg):
    yaw = np.radians(yaw_deg)
    grasp = PLANNER.plan(as_object(box_cloud((0.1, 0.05), yaw, (0.08, 0.04, 0.06)), "box"))
    narrow_side = np.array([-np.sin(yaw), np.cos(yaw)])   # the box's local y, 4 cm long
    assert abs(closing_direction(grasp) @ narrow_side) > np.cos(np.radians(2))
    assert abs(np.sin(grasp.yaw - yaw)) < np.sin(np.radians(2))      # same yaw modulo pi
    assert -np.pi / 2 < grasp.yaw <= np.pi / 2
    assert 0.05 <= grasp.width < 0.058
    np.testing.assert_allclose(grasp.position[:2], [0.1, 0.05], atol=0.003)
    assert grasp.position[2] == pytest.approx(TABLE_Z + 0.06 - 0.03, abs=0.005)  # half its height below the top


def test_rendered_turned_box():
    camera, yaw = CAMERAS["45deg"], np.radians(-35)
    depth, mask = render(camera, box((0.0, 0.05), yaw, (0.08, 0.04, 0.06)))
    grasp = PLANNER.plan(localise(DepthFrame(depth, INTRINSICS, CAMERA_FRAME), mask, "box", 0.7).transformed(camera))
    assert abs(np.sin(grasp.yaw - yaw)) < 0.03
    assert grasp.width == pytest.approx(0.05, abs=0.004)
    np.testing.assert_allclose(grasp.position[:2], [0.0, 0.05], atol=0.004)


def test_too_wide_names_the_numbers():
    with pytest.raises(GraspRefused, match=r"'tray' is 0\.2\d\d m across at its narrowest \(\+0\.010 m clearance\), "
                                           r"gripper opens 0\.120 m") as refused:
        PLANNER.plan(as_object(box_cloud((0.0, 0.0), 0.3, (0.30, 0.20, 0.03)), "tray"))
    assert refused.value.reason == "too_wide"
    # 0.115 m fits the gripper alone but not with the clearance
    with pytest.raises(GraspRefused) as refused:
        PLANNER.plan(as_object(box_cloud((0.0, 0.0), 0.0, (0.15, 0.115, 0.03))))
    assert refused.value.reason == "too_wide"


@pytest.mark.parametrize("xy, z_offset, axis", [((0.6, 0.0), 0.0, "x"), ((0.0, -0.4), 0.0, "y"),
                                                 ((0.0, 0.0), 0.6, "z")])
def test_outside_workspace(xy, z_offset, axis):
    points = cup_cloud(xy=xy) + [0.0, 0.0, z_offset]
    with pytest.raises(GraspRefused, match=rf"centre is outside the workspace: {axis} ") as refused:
        PLANNER.plan(as_object(points))
    assert refused.value.reason == "outside_workspace"


def test_wrong_frame_and_too_few_points():
    with pytest.raises(GraspRefused, match="'cup' is in 'camera_color_optical_frame'") as refused:
        PLANNER.plan(as_object(cup_cloud(), frame="camera_color_optical_frame"))
    assert refused.value.reason == "wrong_frame"
    with pytest.raises(GraspRefused, match="'cup' has 12 points, the planner needs 30") as refused:
        PLANNER.plan(as_object(cup_cloud()[:12]))
    assert refused.value.reason == "too_few_points"


def test_too_small():
    flat = np.column_stack([RNG.uniform(-0.03, 0.03, (200, 2)), np.full(200, TABLE_Z + 0.003)])
    with pytest.raises(GraspRefused, match=r"'card' rises no higher than 0\.405 m") as refused:
        PLANNER.plan(as_object(flat, "card"))
    assert refused.value.reason == "too_small"
    picky = GraspPlanner(GripperSpec(min_width_m=0.02), Workspace())
    with pytest.raises(GraspRefused, match=r"'pen' is 0\.01\d m across at its narrowest, gripper closes to 0\.020 m"):
        picky.plan(as_object(cup_cloud(radius=0.006, height=0.14), "pen"))


def test_fingers_stay_above_the_table():
    high_margin = GraspPlanner(GripperSpec(), Workspace(table_margin_m=0.02))
    grasp = high_margin.plan(as_object(box_cloud((0.0, 0.0), 0.0, (0.08, 0.04, 0.03)), "box"))
    assert grasp.position[2] == pytest.approx(TABLE_Z + 0.02)
    tall = PLANNER.plan(as_object(cup_cloud(radius=0.03, height=0.22), "bottle"))
    assert tall.position[2] == pytest.approx(TABLE_Z + 0.22 - 0.8 * 0.05, abs=0.005)


def test_table_points_in_the_cloud_are_ignored():
    """A mask that bleeds onto the table adds a flat rim of table points around the base."""
    angles, radii = RNG.uniform(0, 2 * np.pi, 400), RNG.uniform(0.035, 0.06, 400)
    rim = np.column_stack([radii * np.cos(angles), radii * np.sin(angles), np.full(400, TABLE_Z)])
    grasp = PLANNER.plan(as_object(np.concatenate([cup_cloud(), rim])))
    assert 0.08 <= grasp.width < 0.088
    assert np.linalg.norm(grasp.position[:2]) < 0.003


def test_score_is_monotone_in_width_margin_and_points():
    scores = [PLANNER.plan(as_object(cup_cloud(radius=r))).score for r in (0.015, 0.025, 0.035, 0.045, 0.05)]
    assert all(a > b for a, b in zip(scores, scores[1:]))
    assert all(0 <= s <= 1 for s in scores)
    points = cup_cloud()[::20]
    # the same footprint, held by more points
    by_count = [PLANNER.plan(as_object(np.tile(points, (k, 1)))).score for k in (1, 5, 50)]
    assert by_count[0] < by_count[1] < by_count[2]


def test_specs_are_validated():
    for bad in (dict(max_width_m=0.0), dict(min_width_m=0.2), dict(finger_length_m=0.0), dict(clearance_m=-0.01)):
        with pytest.raises(ValueError):
            GripperSpec(**bad)
    for bad in (dict(min_xyz=(0.5, -0.35, 0.35)), dict(max_xyz=(0.45, 0.35)), dict(table_margin_m=-0.001),
                dict(table_height_m=float("nan"))):
        with pytest.raises(ValueError):
            Workspace(**bad)
    with pytest.raises(ValueError, match="unknown refusal reason"):
        GraspRefused("slippery", "no")
    with pytest.raises(ValueError):
        GraspPlanner(min_points=0)
