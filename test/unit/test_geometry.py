"""Localisation against depth images ray-cast analytically from known table-top scenes."""
import numpy as np
import pytest

from dino_vla.geometry import (DepthFrame, LocaliserSettings, NoPointsError, align_to_gravity, depth_to_metres,
                               gravity_aligned_box, localise, principal_box)
from dino_vla.types import CameraIntrinsics, Object3D, RigidTransform

TABLE_Z = 0.40
INTRINSICS = CameraIntrinsics(fx=430.0, fy=430.0, cx=319.5, cy=239.5, width=640, height=480)
CAMERA_FRAME = "camera_color_optical_frame"


def look_at(eye, target) -> RigidTransform:
    """base_link <- optical frame (x right, y down, z forward) of a camera at `eye` looking at `target`."""
    eye = np.asarray(eye, np.float64)
    forward = np.asarray(target, np.float64) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    return RigidTransform(np.stack([right, np.cross(forward, right), forward], axis=1), eye, "base_link", CAMERA_FRAME)


def cylinder(centre_xy, radius, height, bottom=TABLE_Z):
    """Ray parameter of the first hit on an upright closed cylinder (inf where missed)."""
    def hit(origin, rays):
        o = origin[:2] - np.asarray(centre_xy)
        a = (rays[:, :2] ** 2).sum(1)
        b = 2 * rays[:, :2] @ o
        disc = b * b - 4 * a * (o @ o - radius ** 2)
        side = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
        z = origin[2] + side * rays[:, 2]
        side = np.where((disc >= 0) & (side > 0) & (z >= bottom) & (z <= bottom + height), side, np.inf)
        top = (bottom + height - origin[2]) / rays[:, 2]
        on_top = ((origin[:2] + top[:, None] * rays[:, :2] - centre_xy) ** 2).sum(1) <= radius ** 2
        return np.minimum(side, np.where(on_top & (top > 0), top, np.inf))
    return hit


def box(centre_xy, yaw, size, bottom=TABLE_Z):
    """Ray parameter of the first hit on a box standing on the table, turned by `yaw` (slab method)."""
    c, s = np.cos(yaw), np.sin(yaw)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    centre = np.array([*centre_xy, bottom + size[2] / 2])
    def hit(origin, rays):
        o, d = (origin - centre) @ rotation, rays @ rotation
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (-np.asarray(size) / 2 - o) / d, (np.asarray(size) / 2 - o) / d
        near, far = np.minimum(t1, t2).max(1), np.maximum(t1, t2).min(1)
        return np.where((near <= far) & (near > 0), near, np.inf)
    return hit


def render(camera: RigidTransform, shape) -> tuple[np.ndarray, np.ndarray]:
    """float32 depth (metres along the optical axis) of the shape on the table, and the shape's mask."""
    v, u = np.mgrid[: INTRINSICS.height, : INTRINSICS.width]
    rays_cam = np.stack([(u - INTRINSICS.cx) / INTRINSICS.fx, (v - INTRINSICS.cy) / INTRINSICS.fy,
                         np.ones(u.shape)], axis=-1).reshape(-1, 3)
    rays = camera.rotate(rays_cam)      # optical z component 1: ray parameter = depth
    table = (TABLE_Z - camera.translation[2]) / rays[:, 2]
    table = np.where(table > 0, table, np.inf)
    obj = shape(camera.translation, rays)
    mask = obj < table
    depth = np.where(mask, obj, table).astype(np.float32)
    return depth.reshape(u.shape), mask.reshape(u.shape)


CUP_XY, CUP_R, CUP_H = np.array([0.02, -0.03]), 0.035, 0.10
CUP_CENTRE = np.array([*CUP_XY, TABLE_Z + CUP_H / 2])
CAMERAS = {"45deg": look_at([0.55, 0.0, 0.95], [0.0, 0.0, TABLE_Z]),
           "60deg_side": look_at([0.25, 0.25, 1.00], [0.0, 0.0, TABLE_Z])}


@pytest.fixture(scope="module", params=sorted(CAMERAS))
def cup_view(request):
    camera = CAMERAS[request.param]
    depth, mask = render(camera, cylinder(CUP_XY, CUP_R, CUP_H))
    return camera, depth, mask


def cup_centre_error(obj_camera: Object3D, camera: RigidTransform) -> float:
    return float(np.linalg.norm(align_to_gravity(obj_camera.transformed(camera)).centroid - CUP_CENTRE))


def test_cylinder_centre_within_5mm_once_gravity_aligned(cup_view):
    camera, depth, mask = cup_view
    obj = localise(DepthFrame(depth, INTRINSICS, CAMERA_FRAME), mask, "cup", 0.9)
    assert obj.frame == CAMERA_FRAME and obj.phrase == "cup" and obj.score == pytest.approx(0.9)
    assert len(obj.points) > 2000
    upright = align_to_gravity(obj.transformed(camera))
    assert np.linalg.norm(upright.centroid - CUP_CENTRE) < 0.005
    assert upright.extent[:2] == pytest.approx([2 * CUP_R, 2 * CUP_R], abs=0.004)
    assert upright.extent[2] == pytest.approx(CUP_H, abs=0.003)
    # the same box computed in the camera frame, with up expressed there, is the same box
    in_camera = align_to_gravity(obj, up=camera.inverse().rotate([0.0, 0.0, 1.0]))
    assert camera.apply(in_camera.centroid) == pytest.approx(upright.centroid, abs=1e-6)


def test_visible_surface_box_is_biased_toward_the_camera(cup_view):
    """The camera-frame box bounds what the camera sees: the front half-shell and the top, so its centre
    sits off the axis toward the camera - what align_to_gravity corrects."""
    camera, depth, mask = cup_view
    obj = localise(DepthFrame(depth, INTRINSICS, CAMERA_FRAME), mask, "cup", 0.9)
    local = (obj.points - obj.centroid) @ obj.rotation
    assert np.all(np.abs(local) <= obj.extent / 2 + 1e-6)
    assert np.abs(local).max(axis=0) == pytest.approx(obj.extent / 2, abs=1e-6)
    offset = camera.apply(obj.centroid)[:2] - CUP_XY
    towards_camera = camera.translation[:2] - CUP_XY
    assert offset @ towards_camera / np.linalg.norm(towards_camera) > 0.005


def test_invalid_and_out_of_range_depth_is_ignored(cup_view):
    camera, depth, mask = cup_view
    clean = localise(DepthFrame(depth, INTRINSICS, CAMERA_FRAME), mask, "cup", 0.9)
    noisy = depth.copy()
    rows, cols = np.nonzero(mask)
    pick = np.random.default_rng(0).choice(len(rows), size=len(rows) // 10, replace=False)
    noisy[rows[pick], cols[pick]] = np.resize(np.float32([np.nan, 0.0, np.inf, -np.inf, 0.05, 3.5, 40.0]), len(pick))
    sprinkled = localise(DepthFrame(noisy, INTRINSICS, CAMERA_FRAME), mask, "cup", 0.9)
    assert len(sprinkled.points) < len(clean.points)
    assert cup_centre_error(sprinkled, camera) < 0.005
    assert np.linalg.norm(align_to_gravity(sprinkled.transformed(camera)).centroid
                          - align_to_gravity(clean.transformed(camera)).centroid) < 0.001


def test_millimetre_depth_gives_the_same_answer(cup_view):
    camera, depth, mask = cup_view
    metres = localise(DepthFrame(depth, INTRINSICS, CAMERA_FRAME), mask, "cup", 0.9)
    in_mm = DepthFrame(np.round(depth * 1000).astype(np.uint16), INTRINSICS, CAMERA_FRAME)
    millimetres = localise(in_mm, mask, "cup", 0.9)
    assert np.linalg.norm(millimetres.centroid - metres.centroid) < 0.001
    assert cup_centre_error(millimetres, camera) < 0.005


def test_far_outliers_inside_the_mask_are_removed(cup_view):
    camera, depth, mask = cup_view
    clean = localise(DepthFrame(depth, INTRINSICS, CAMERA_FRAME), mask, "cup", 0.9)
    flying = depth.copy()
    rows, cols = np.nonzero(mask)
    pick = np.random.default_rng(1).choice(len(rows), size=8, replace=False)
    flying[rows[pick], cols[pick]] = 2.9
    obj = localise(DepthFrame(flying, INTRINSICS, CAMERA_FRAME), mask, "cup", 0.9)
    assert obj.points[:, 2].max() < 1.5
    # compared upright: the camera-frame principal box turns by a degree or two for a few points less
    assert np.linalg.norm(align_to_gravity(obj.transformed(camera)).centroid
                          - align_to_gravity(clean.transformed(camera)).centroid) < 0.001
    assert cup_centre_error(obj, camera) < 0.005


def test_a_mask_bleeding_onto_the_table_behind_keeps_the_object_with_clustering(cup_view):
    """A mask grown 6 px upward in the image (what a segmenter's outline error does) takes in the table behind
    the cup's rim, a dense patch outlier removal keeps: the largest cluster (cluster_eps_m) is the cup again."""
    camera, depth, mask = cup_view
    bled = mask.copy()
    for shift in range(1, 7):
        bled[:-shift] |= mask[shift:]
    frame = DepthFrame(depth, INTRINSICS, CAMERA_FRAME)
    clean = cup_centre_error(localise(frame, mask, "cup", 0.9), camera)
    every_point = cup_centre_error(localise(frame, bled, "cup", 0.9), camera)
    clustered = cup_centre_error(localise(frame, bled, "cup", 0.9, LocaliserSettings(cluster_eps_m=0.02)), camera)
    assert every_point > clean + 0.01 and clustered < 0.005


def test_empty_mask_and_no_depth_say_why():
    depth = np.full((INTRINSICS.height, INTRINSICS.width), 0.8, np.float32)
    mask = np.zeros(depth.shape, bool)
    with pytest.raises(NoPointsError, match=r"no valid depth inside the mask of 'cup' \(mask 0 px\)"):
        localise(DepthFrame(depth, INTRINSICS, CAMERA_FRAME), mask, "cup", 0.9)
    mask[100:120, 100:110] = True
    depth[mask] = 0.0
    with pytest.raises(NoPointsError, match=r"'cup': 200 px in mask, 0 with depth in \[0.1, 3.0\] m"):
        localise(DepthFrame(depth, INTRINSICS, CAMERA_FRAME), mask, "cup", 0.9)
    depth[100:105, 100:104] = 0.8
    with pytest.raises(NoPointsError, match=r"too few points for 'cup': 200 px in mask, 20 with .*; need 30"):
        localise(DepthFrame(depth, INTRINSICS, CAMERA_FRAME), mask, "cup", 0.9)


def test_shape_and_dtype_mismatches_are_rejected():
    depth = np.ones((INTRINSICS.height, INTRINSICS.width), np.float32)
    mask = np.ones(depth.shape, bool)
    with pytest.raises(ValueError, match="must match the depth's"):
        localise(DepthFrame(depth, INTRINSICS, CAMERA_FRAME), mask[:, 1:], "cup", 0.9)
    with pytest.raises(ValueError, match="depth must be aligned to the colour image"):
        localise(DepthFrame(depth[1:], INTRINSICS, CAMERA_FRAME), mask[1:], "cup", 0.9)
    with pytest.raises(ValueError, match="mask must be bool"):
        localise(DepthFrame(depth, INTRINSICS, CAMERA_FRAME), mask.astype(np.uint8), "cup", 0.9)
    with pytest.raises(ValueError, match="uint16 millimetres .* or float32 metres"):
        depth_to_metres(depth.astype(np.float64))


def test_depth_to_metres():
    raw = np.array([[0, 1500, 65535]], np.uint16)
    assert depth_to_metres(raw).dtype == np.float32
    np.testing.assert_allclose(depth_to_metres(raw), [[np.nan, 1.5, 65.535]], rtol=1e-6)
    metres = np.array([[0.0, np.nan, np.inf, -1.0, 0.75]], np.float32)
    np.testing.assert_array_equal(np.isnan(depth_to_metres(metres)), [[True, True, True, True, False]])
    assert metres[0, 2] == np.inf   # the input is left alone


@pytest.mark.parametrize("bad", [dict(depth_min_m=3.0, depth_max_m=1.0), dict(voxel_size_m=-0.01),
                                 dict(outlier_neighbours=0), dict(outlier_std_ratio=0.0), dict(min_points=0),
                                 dict(cluster_eps_m=-0.01)])
def test_settings_are_validated(bad):
    with pytest.raises(ValueError):
        LocaliserSettings(**bad)


def test_voxel_downsampling_keeps_the_centre(cup_view):
    camera, depth, mask = cup_view
    obj = localise(DepthFrame(depth, INTRINSICS, CAMERA_FRAME), mask, "cup", 0.9, LocaliserSettings(voxel_size_m=0.005))
    full = localise(DepthFrame(depth, INTRINSICS, CAMERA_FRAME), mask, "cup", 0.9)
    assert len(obj.points) < len(full.points) / 2
    assert cup_centre_error(obj, camera) < 0.005


def test_boxes_are_right_handed_orthonormal_and_deterministic():
    rng = np.random.default_rng(2)
    for _ in range(20):
        points = rng.normal(size=(200, 3)) * rng.uniform(0.01, 0.1, size=3) @ random_rotation(rng).T
        for centre, rotation, extent in (principal_box(points), gravity_aligned_box(points)):
            np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-9)
            assert np.linalg.det(rotation) == pytest.approx(1.0)
            local = (points - centre) @ rotation
            assert np.all(np.abs(local) <= extent / 2 + 1e-9)
        centre, rotation, extent = principal_box(points)
        assert extent[0] >= extent[1] >= extent[2]
        again = principal_box(points.copy())
        for a, b in zip((centre, rotation, extent), again):
            np.testing.assert_array_equal(a, b)


def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@pytest.mark.parametrize("yaw", np.radians([0, 17, 45, 89, 90, 120, -60, 179]))
def test_gravity_aligned_box_of_a_turned_box(yaw):
    """Points on the surface of a 0.08 x 0.04 x 0.06 box turned by yaw: column 0 along its long side."""
    rng = np.random.default_rng(3)
    local = rng.uniform(-0.5, 0.5, size=(3000, 3))
    face = rng.integers(0, 3, size=len(local))
    local[np.arange(len(local)), face] = np.sign(local[np.arange(len(local)), face]) * 0.5
    c, s = np.cos(yaw), np.sin(yaw)
    turn = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    centre = np.array([0.1, -0.2, 0.43])
    points = (local * [0.08, 0.04, 0.06]) @ turn.T + centre
    got_centre, rotation, extent = gravity_aligned_box(points)
    np.testing.assert_allclose(got_centre, centre, atol=1e-3)
    np.testing.assert_allclose(extent, [0.08, 0.04, 0.06], atol=1e-3)
    np.testing.assert_allclose(rotation[:, 2], [0, 0, 1], atol=1e-12)
    got_yaw = np.arctan2(rotation[1, 0], rotation[0, 0])
    assert -np.pi / 2 < got_yaw <= np.pi / 2
    assert abs(np.sin(got_yaw - yaw)) < 1e-3   # the long side, modulo pi


def test_gravity_aligned_box_of_a_rendered_box():
    """A box seen from one view: the top face gives the whole footprint."""
    camera = CAMERAS["45deg"]
    yaw = np.radians(30)
    depth, mask = render(camera, box((0.0, 0.05), yaw, (0.08, 0.04, 0.06)))
    obj = align_to_gravity(localise(DepthFrame(depth, INTRINSICS, CAMERA_FRAME), mask, "box", 0.5).transformed(camera))
    np.testing.assert_allclose(obj.centroid, [0.0, 0.05, TABLE_Z + 0.03], atol=0.004)
    np.testing.assert_allclose(obj.extent, [0.08, 0.04, 0.06], atol=0.004)
    assert abs(np.sin(np.arctan2(obj.rotation[1, 0], obj.rotation[0, 0]) - yaw)) < 0.02


def test_transformed_matches_transforming_by_hand(cup_view):
    camera, depth, mask = cup_view
    obj = localise(DepthFrame(depth, INTRINSICS, CAMERA_FRAME), mask, "cup", 0.9)
    moved = obj.transformed(camera)
    assert moved.frame == "base_link"
    np.testing.assert_allclose(moved.points, obj.points.astype(np.float64) @ camera.rotation.T + camera.translation,
                               atol=1e-6)
    np.testing.assert_allclose(moved.centroid, camera.rotation @ obj.centroid + camera.translation, atol=1e-12)
    np.testing.assert_allclose(moved.rotation, camera.rotation @ obj.rotation, atol=1e-12)
    np.testing.assert_array_equal(moved.extent, obj.extent)
    assert np.linalg.det(moved.rotation) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="object is in 'base_link'"):
        moved.transformed(camera)
