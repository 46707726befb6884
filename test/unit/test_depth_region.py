"""geometry.depth_region and PickPlanner.plan_at_pixel: the object under a pixel from depth alone, on a
hand-made depth image (a camera 0.6 m above a table, looking straight down) whose answers are known."""
import math

import numpy as np
import pytest

from dino_vla.geometry.depth import DepthFrame, points_in
from dino_vla.geometry.depth_region import RegionSettings, object_region, object_regions, region_shapes
from dino_vla.geometry.grasp_planner import GripperSpec, Workspace
from dino_vla.geometry.localise import LocaliserSettings, NoPointsError
from dino_vla.pick import PickFailure, PickPlanner, PickSettings
from dino_vla.types import CameraIntrinsics, RigidTransform

TABLE_M = 0.4
# camera 1 m above the base, optical axis down: camera x = base x, camera y = base -y
CAMERA = RigidTransform(np.diag([1.0, -1.0, -1.0]), np.array([0.0, 0.0, 1.0]), "base", "camera")
K = CameraIntrinsics(100.0, 100.0, 80.0, 60.0, 160, 120)
SMALL = (slice(40, 50), slice(40, 54))      # rows, cols: a block 6 cm tall, 5.4 x 7.6 cm seen from above
WIDE = (slice(40, 71), slice(54, 85))       # touching it on the right, 10 cm tall and 15 cm across
FLUSH = (slice(80, 90), slice(40, 54))      # and a block as tall as the small one, touching nothing


def table_scene(holes: bool = False) -> DepthFrame:
    depth = np.full((120, 160), 1.0 - TABLE_M, np.float32)
    depth[SMALL] = 1.0 - TABLE_M - 0.06
    depth[WIDE] = 1.0 - TABLE_M - 0.10
    depth[FLUSH] = 1.0 - TABLE_M - 0.06
    if holes:
        depth[::7, ::5] = np.nan          # readings missing all over, the objects' included
    return DepthFrame(depth, K, "camera")


def box_mask(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((120, 160), bool)
    mask[rows, cols] = True
    return mask


def test_points_in_lifts_every_pixel_into_the_target_frame():
    points, valid = points_in(table_scene(), CAMERA)
    assert valid.all() and points.shape == (120, 160, 3)
    assert np.allclose(points[..., 2][box_mask(*SMALL)], TABLE_M + 0.06)
    assert np.allclose(points[0, 0], [(0 - 80) * 0.6 / 100, -(0 - 60) * 0.6 / 100, TABLE_M])
    with pytest.raises(ValueError, match="camera pose is for 'other'"):
        points_in(table_scene(), RigidTransform(CAMERA.rotation, CAMERA.translation, "base", "other"))


def test_the_region_is_the_object_at_the_pixel_and_stops_at_its_neighbours():
    frame = table_scene()
    assert (object_region(frame, CAMERA, TABLE_M, (46.0, 45.0)) == box_mask(*SMALL)).all()
    # touching the small block, 4 cm higher: a depth edge, so two regions
    assert (object_region(frame, CAMERA, TABLE_M, (70.0, 55.0)) == box_mask(*WIDE)).all()
    # a pointer on the table just beside an object takes the object; far from all, nothing
    assert (object_region(frame, CAMERA, TABLE_M, (46.0, 95.0)) == box_mask(*FLUSH)).all()
    with pytest.raises(NoPointsError, match="within 12 px of pixel \\(120, 20\\)"):
        object_region(frame, CAMERA, TABLE_M, (120.0, 20.0))
    with pytest.raises(NoPointsError):
        object_region(frame, CAMERA, TABLE_M, (46.0, 95.0), RegionSettings(reach_px=2))


def test_the_rim_cut_as_an_edge_comes_back_and_missing_readings_do_not_split_it():
    frame = table_scene(holes=True)
    region = object_region(frame, CAMERA, TABLE_M, (46.0, 45.0))
    readable = box_mask(*SMALL) & np.isfinite(frame.metres)
    assert (region == readable).all()
    # without regrowing, the pixels beside each hole and along the outline are cut away
    bare = object_region(frame, CAMERA, TABLE_M, (46.0, 45.0), RegionSettings(regrow_px=0))
    assert bare.sum() < region.sum() and not (bare & ~readable).any()


def test_a_region_never_takes_a_taller_neighbours_rim():
    depth = table_scene().metres.copy()
    depth[WIDE[0], WIDE[1].start] = 1.0 - TABLE_M - 0.03   # the tall block's rim at a third height
    frame = DepthFrame(depth, K, "camera")
    small = object_region(frame, CAMERA, TABLE_M, (46.0, 45.0))
    assert (small == box_mask(*SMALL)).all()


def test_region_shapes_give_each_objects_height_and_footprint():
    regions = object_regions(table_scene(), CAMERA, TABLE_M)
    # three objects; their outlines, where the depth jumps, belong to none
    assert regions.labels.max() == 3 and not (regions.labels > 0)[~regions.above].any()
    shapes = region_shapes(regions)
    for (rows, cols), height, sides in ((SMALL, 0.06, (11, 7)), (FLUSH, 0.06, (11, 7)), (WIDE, 0.10, (28, 28))):
        inside = shapes[rows.start + 1:rows.stop - 1, cols.start + 1:cols.stop - 1]
        assert np.allclose(inside, inside[0, 0]), "one shape per object"
        # heights from the depth; sides between the outermost pixel centres, at this depth's pixel size
        assert inside[0, 0, 0] == pytest.approx(height, abs=1e-4)
        assert inside[0, 0, 1:] == pytest.approx(np.array(sides) * (1.0 - TABLE_M - height) / 100, abs=1e-4)
    assert not shapes[regions.labels == 0].any()


def test_regions_already_cut_are_taken_only_when_cut_from_the_same_inputs():
    frame = table_scene()
    regions = object_regions(frame, CAMERA, TABLE_M)
    assert object_regions(frame, CAMERA, TABLE_M, cut=regions) is regions
    lower = object_regions(frame, CAMERA, TABLE_M - 0.05, cut=regions)
    assert lower is not regions and lower.table_height_m == TABLE_M - 0.05
    assert object_regions(table_scene(), CAMERA, TABLE_M, cut=regions) is not regions
    assert object_regions(frame, CAMERA, TABLE_M, RegionSettings(depth_edge_m=0.05), cut=regions) is not regions
    # handed the frame's regions, the object at a pixel is the one cut from scratch
    assert (object_region(frame, CAMERA, TABLE_M, (46.0, 45.0), cut=regions) == box_mask(*SMALL)).all()


def _planner(max_width_m: float = 0.12) -> PickPlanner:
    return PickPlanner(PickSettings(LocaliserSettings(), GripperSpec(max_width_m=max_width_m),
                                    Workspace(frame="base", table_height_m=TABLE_M)))


def test_plan_at_pixel_grasps_the_object_there_across_its_narrow_side():
    grasp = _planner().plan_at_pixel(table_scene(), (46.0, 45.0), "block", 0.7, CAMERA)
    points, _ = points_in(table_scene(), CAMERA)
    top = points[box_mask(*SMALL)]
    assert grasp.frame == "base" and grasp.phrase == "block"
    assert np.allclose(grasp.position[:2], top[:, :2].mean(0), atol=0.005)
    assert TABLE_M < grasp.position[2] < TABLE_M + 0.06
    # 10 rows (5.4 cm, base y) are the narrow side: the fingers close along y, (-sin yaw, cos yaw)
    assert math.isclose(abs(math.cos(grasp.yaw)), 1.0, abs_tol=0.05)
    assert 0.054 <= grasp.width <= 0.054 + 0.01 + 0.012


def test_plan_at_pixel_says_why_it_cannot():
    with pytest.raises(PickFailure, match="gripper opens") as err:
        _planner().plan_at_pixel(table_scene(), (70.0, 55.0), "box", 0.5, CAMERA)
    assert err.value.reason == "too_wide"
    with pytest.raises(PickFailure) as err:
        _planner().plan_at_pixel(table_scene(), (120.0, 20.0), "box", 0.5, CAMERA)
    assert err.value.reason == "no_points"
    with pytest.raises(PickFailure) as err:
        _planner().plan_at_pixel(DepthFrame(table_scene().metres, K, "elsewhere"), (46.0, 45.0), "box", 0.5, CAMERA)
    assert err.value.reason == "wrong_frame"
