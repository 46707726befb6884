"""The MuJoCo table-top: seeded layouts, a camera whose intrinsics and pose agree with what it renders,
ground-truth masks, a gripper whose outcome reports say what really happened, and the Gazebo world in step."""
import math
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dino_vla.sim.mujoco_sim import TabletopSim
from dino_vla.sim.scene import (
    CAMERA_FOVY_DEG, CAMERA_FRAME, CAMERA_POSITION, CAMERA_TARGET, CATALOGUE, MIN_CLEARANCE, PLACEMENT_X,
    PLACEMENT_Y, TABLE_HEIGHT, Appearance, ORIGINAL_CATEGORIES, PlacedObject, SceneSpec, catalogue_object,
    default_scene, layout, look_at, random_appearance, random_scene)

WORLD = Path(__file__).resolve().parents[2] / "dino_vla" / "sim" / "worlds" / "tabletop.sdf"
NAMES = list(ORIGINAL_CATEGORIES)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """MuJoCo writes MUJOCO_LOG.TXT into the working directory."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def sim():
    with TabletopSim(default_scene()) as s:
        s.settle(0.3)
        yield s


# ---- scenes --------------------------------------------------------------------------------------------------
def test_layouts_are_a_function_of_the_seed():
    assert random_scene(7) == random_scene(7)
    assert random_scene(7, "cup", 3) == random_scene(7, "cup", 3)
    assert random_scene(7) != random_scene(8)
    assert random_scene(7, "cup") != random_scene(8, "cup")


def test_layouts_hold_the_target_inside_the_region_with_clearance():
    for seed in range(200):
        target, n = NAMES[seed % len(NAMES)], seed % len(NAMES)
        spec = random_scene(seed, target, n_distractors=n)
        assert spec.target == target and spec.names[0] == target
        assert len(set(spec.names)) == n + 1
        for i, a in enumerate(spec.objects):
            assert PLACEMENT_X[0] <= a.x <= PLACEMENT_X[1] and PLACEMENT_Y[0] <= a.y <= PLACEMENT_Y[1]
            for b in spec.objects[i + 1:]:
                gap = math.hypot(a.x - b.x, a.y - b.y) - a.kind.footprint_radius - b.kind.footprint_radius
                assert gap >= MIN_CLEARANCE, (seed, a.name, b.name, gap)
    assert {random_scene(s).target for s in range(60)} == set(NAMES)


def test_scene_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown object"):
        random_scene(0, "teapot")
    with pytest.raises(ValueError, match="n_distractors"):
        random_scene(0, n_distractors=len(ORIGINAL_CATEGORIES))
    with pytest.raises(ValueError, match="unique"):
        SceneSpec((PlacedObject("cup", 0, 0, 0), PlacedObject("cup", 0.2, 0, 0)))
    with pytest.raises(ValueError, match="target"):
        SceneSpec((PlacedObject("cup", 0, 0, 0),), target="box")


def test_catalogue_objects_fit_the_gripper_and_answer_to_their_names():
    assert len(CATALOGUE) >= 10
    assert len({o.colour for o in CATALOGUE if o.name in ORIGINAL_CATEGORIES}) == len(ORIGINAL_CATEGORIES)
    nouns = [n for o in CATALOGUE for n in o.synonyms]
    assert len(nouns) == len(set(nouns))                       # a noun names one category
    for o in CATALOGUE:
        big = o.variant(scale=1.2)
        assert big.grasp_width <= 0.105 and o.matches(o.name) and o.matches(f"the {o.colour} {o.name}s")
        assert big.height == pytest.approx(1.2 * o.height) and big.mass == pytest.approx(1.2 ** 3 * o.mass)
    cup = catalogue_object("cup")
    assert cup.matches("mug") and cup.matches("red cup") and cup.matches("coffee mugs")
    assert not cup.matches("blue cup") and not cup.matches("box") and not cup.matches("red")


def test_instances_of_one_category_differ_in_paint_and_size_and_render_apart(tmp_path):
    rng = np.random.default_rng(3)
    objects = [PlacedObject("cup", 0, 0, 0, colour="blue", scale=0.8, label="cup_1"),
               PlacedObject("cup", 0, 0, 0, colour="yellow", scale=1.2, label="cup_2"),
               PlacedObject("jar", 0, 0, 0), PlacedObject("bowl", 0, 0, 0, colour="green")]
    spec = SceneSpec(layout(objects, rng), target="cup_2", appearance=random_appearance(rng))
    assert spec.names == ("cup_1", "cup_2", "jar", "bowl")
    assert spec.get("cup_2").description == "yellow cup" and spec.get("jar").description == "orange jar"
    with TabletopSim(spec) as sim:
        sim.settle(0.3)
        frame = sim.render()
        assert set(np.unique(frame.segmentation)) == {0, 1, 2, 3, 4}
        small, big = ((frame.segmentation == sim.segmentation_ids[n]).sum() for n in ("cup_1", "cup_2"))
        assert big > 1.5 * small
        blue = frame.rgb[frame.segmentation == sim.segmentation_ids["cup_1"]].mean(0)
        assert blue[2] > blue[0] + 40
        detections, masks = sim.ground_truth("red mug", frame)   # the noun decides, the paint is reported
        assert detections.phrases == ("red mug", "red mug") and sorted(masks.colours) == ["blue", "yellow"]
        poses = sim.object_poses()
        assert set(poses) == set(spec.names)


def test_appearance_changes_the_light_and_the_table_but_not_the_default_look():
    spec = default_scene()
    with TabletopSim(spec) as plain, TabletopSim(replace(spec, appearance=Appearance(0.6, (0.8, 0.78, 0.72), 0.2))
                                                  ) as varied:
        a, b = plain.render(), varied.render()
    table = a.segmentation == 0
    assert abs(float(a.rgb[table].mean()) - float(b.rgb[table].mean())) > 10
    assert (a.segmentation == b.segmentation).all()
    assert {random_appearance(np.random.default_rng(s)) for s in range(5)} != {Appearance()}


# ---- camera --------------------------------------------------------------------------------------------------
def test_render_gives_aligned_rgb_depth_and_labels(sim):
    frame = sim.render()
    assert frame.rgb.shape == (480, 640, 3) and frame.rgb.dtype == np.uint8
    assert frame.depth.shape == (480, 640) and frame.depth.dtype == np.float32
    assert frame.segmentation.shape == (480, 640) and frame.segmentation.dtype == np.uint8
    hit = frame.depth > 0
    assert hit.mean() > 0.99 and np.isfinite(frame.depth).all()
    assert 0.4 < frame.depth[hit].min() and frame.depth[hit].max() < 5.0
    assert set(np.unique(frame.segmentation)) == {0} | {sim.segmentation_ids[n] for n in sim.object_names}
    assert frame.sim_time == pytest.approx(0.3)
    assert frame.rgb[frame.segmentation == sim.segmentation_ids["cup"]].mean(0)[0] > 120   # the cup is red


def test_camera_pose_is_the_optical_frame_looking_at_the_table(sim):
    pose = sim.camera_pose()
    assert (pose.parent, pose.child) == ("base_link", CAMERA_FRAME)
    np.testing.assert_allclose(pose.translation, CAMERA_POSITION, atol=1e-9)
    np.testing.assert_allclose(pose.rotation @ pose.rotation.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(pose.rotation) == pytest.approx(1.0)
    x, y, z = pose.rotation.T
    towards = np.subtract(CAMERA_TARGET, CAMERA_POSITION)
    np.testing.assert_allclose(z, towards / np.linalg.norm(towards), atol=1e-9)
    assert abs(x[2]) < 1e-9 and y[2] < 0          # no roll, image y points down
    np.testing.assert_allclose(pose.rotation, look_at(CAMERA_POSITION, CAMERA_TARGET), atol=1e-9)


def test_back_projected_cup_pixels_lie_on_the_cup_surface(sim):
    """Intrinsics + camera pose + depth must reproduce the cup's true geometry, pixel by pixel."""
    frame = sim.render()
    k = sim.intrinsics()
    assert (k.width, k.height) == (640, 480) and k.fx == k.fy
    v, u = np.nonzero(frame.segmentation == sim.segmentation_ids["cup"])
    assert len(u) > 1000
    z = frame.depth[v, u].astype(np.float64)
    camera_points = np.stack([(u - k.cx) / k.fx * z, (v - k.cy) / k.fy * z, z], 1)
    in_cup = sim.object_poses()["cup"].inverse().apply(sim.camera_pose().apply(camera_points))
    distance = np.min([_surface_distance(in_cup, part) for part in catalogue_object("cup").parts], axis=0)
    assert np.percentile(distance, 99) < 0.001 and distance.max() < 0.002
    # and the projection of the cup's true centre falls on the cup
    centre = sim.camera_pose().inverse().apply(sim.object_poses()["cup"].translation)
    col, row = k.fx * centre[0] / centre[2] + k.cx, k.fy * centre[1] / centre[2] + k.cy
    assert frame.segmentation[round(row), round(col)] == sim.segmentation_ids["cup"]


def _surface_distance(points: np.ndarray, part) -> np.ndarray:
    """Unsigned distance from points (in the object's frame) to the surface of one primitive."""
    p = points - np.asarray(part.pos)
    if part.shape == "cylinder":
        q = np.stack([np.hypot(p[:, 0], p[:, 1]) - part.size[0], np.abs(p[:, 2]) - part.size[1]], 1)
    elif part.shape == "box":
        q = np.abs(p) - np.asarray(part.size)
    else:
        return np.abs(np.linalg.norm(p, axis=1) - part.size[0])
    return np.abs(np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(1), 0))


def test_intrinsics_follow_the_resolution():
    with TabletopSim(default_scene(), width=320, height=240) as small:
        k = small.intrinsics()
        assert small.render().rgb.shape == (240, 320, 3)
    assert k.fy == pytest.approx(120 / math.tan(math.radians(CAMERA_FOVY_DEG / 2)))
    assert (k.cx, k.cy) == (159.5, 119.5)


def test_parked_gripper_is_behind_the_camera(sim):
    to_camera = sim.camera_pose().inverse()
    m, d = sim.model, sim.data
    gripper_bodies = {m.body(b).id for b in ("gripper", "finger_left", "finger_right")}
    geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] in gripper_bodies]
    depth_in_camera = to_camera.apply(d.geom_xpos[geoms])[:, 2]
    assert np.all(depth_in_camera + m.geom_rbound[geoms] < 0)
    np.testing.assert_allclose(d.body("gripper").xpos, sim.gripper_home, atol=1e-3)


# ---- ground truth --------------------------------------------------------------------------------------------
def test_ground_truth_masks_are_the_segmentation(sim):
    frame = sim.render()
    cup_mask = frame.segmentation == sim.segmentation_ids["cup"]
    for phrase in ("cup", "Red mug.", "the red cup"):
        detections, masks = sim.ground_truth(phrase, frame)
        assert len(detections) == len(masks) == 1
        np.testing.assert_array_equal(masks.masks[0], cup_mask)
        rows, cols = np.nonzero(cup_mask)
        np.testing.assert_array_equal(detections.boxes[0], [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        assert detections.scores[0] == 1.0 and detections.image_size == (480, 640)
    assert sim.ground_truth("red mug", frame)[0].phrases == ("red mug",)
    # the noun decides; the paint is reported for the pick to check
    blue = sim.ground_truth("blue cup", frame)
    assert blue[0].phrases == ("blue cup",) and blue[1].colours == ("red",)
    assert len(sim.ground_truth("can", frame)[0]) == 0        # not in this scene
    everything, all_masks = sim.ground_truth_all(frame)
    assert everything.phrases == sim.object_names
    assert not np.logical_and(all_masks.masks[0], all_masks.masks[1:]).any()


# ---- grasping ------------------------------------------------------------------------------------------------
def test_grasp_at_the_true_pose_lifts_the_cup(sim):
    outcome = sim.execute(sim.reference_grasp("cup"))
    assert outcome.success and outcome.lifted_object == "cup" and outcome.matches_phrase
    assert outcome.reason == "" and outcome.blocked_by is None and outcome.disturbed == ()
    assert outcome.lifted_m["cup"] > 0.8 * 0.15 and abs(outcome.lifted_m["box"]) < 0.005
    assert outcome.finger_opening == pytest.approx(catalogue_object("cup").grasp_width, abs=0.005)
    assert 3 < outcome.sim_s < 10 and outcome.wall_s > 0


def test_grasp_10cm_off_lifts_nothing(sim):
    grasp = sim.reference_grasp("cup")
    outcome = sim.execute(replace(grasp, position=grasp.position + [0.10, 0.0, 0.0]))
    assert not outcome.success and outcome.lifted_object is None and not outcome.matches_phrase
    assert outcome.reason == "nothing lifted" and outcome.finger_opening < 0.005


def test_lifting_the_wrong_object_is_reported(sim):
    outcome = sim.execute(replace(sim.reference_grasp("box"), phrase="cup"))
    assert outcome.success and outcome.lifted_object == "box" and not outcome.matches_phrase


def test_landing_on_an_object_is_reported_as_a_collision(sim):
    outcome = sim.execute(replace(sim.reference_grasp("box"), width=0.02))
    assert not outcome.success and outcome.blocked_by == "box" and outcome.reason.startswith("collided with box")


def test_grasp_outside_base_link_is_refused(sim):
    with pytest.raises(ValueError, match="base_link"):
        sim.execute(replace(sim.reference_grasp("cup"), frame=CAMERA_FRAME))


def test_reset_restores_the_layout(sim):
    sim.reset()
    before = sim.object_poses()
    sim.execute(sim.reference_grasp("cup"))
    assert sim.object_poses()["cup"].translation[2] > before["cup"].translation[2] + 0.1
    sim.reset()
    assert sim.data.time == 0.0
    for name, pose in sim.object_poses().items():
        np.testing.assert_allclose(pose.translation, before[name].translation, atol=1e-12)
        np.testing.assert_allclose(pose.rotation, before[name].rotation, atol=1e-12)
        np.testing.assert_allclose(pose.translation, sim.spec.get(name).position, atol=1e-12)
    np.testing.assert_allclose(sim.data.mocap_pos[0], sim.gripper_home)


@pytest.mark.parametrize("name", NAMES)
def test_true_pose_grasp_lifts_every_catalogue_object(name):
    for seed in range(3):
        with TabletopSim(random_scene(seed, name, n_distractors=2)) as s:
            s.settle(0.3)
            outcome = s.execute(s.reference_grasp(name))
            assert outcome.success and outcome.lifted_object == name, (seed, outcome.reason)


# ---- Gazebo world ------------------------------------------------------------------------------------------
def _pose(element) -> np.ndarray:
    return np.array([float(v) for v in element.findtext("pose").split()])


def _rpy_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    cr, sr, cp, sp, cy, sy = (math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch),
                              math.cos(yaw), math.sin(yaw))
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return rz @ ry @ rx


def test_gazebo_world_matches_the_default_scene_and_camera():
    world = ET.parse(WORLD).getroot().find("world")
    models = {m.get("name"): m for m in world.findall("model")}
    for k, placed in enumerate(default_scene().objects):
        model = models[placed.name]
        pose = _pose(model)
        np.testing.assert_allclose(pose[:3], placed.position, atol=1e-6)
        assert pose[3:5].tolist() == [0, 0] and pose[5] == pytest.approx(placed.yaw, abs=1e-6)
        label = model.find("plugin[@name='gz::sim::systems::Label']/label").text
        assert int(label) == k + 1          # TabletopSim.segmentation_ids
        assert float(model.findtext("link/inertial/mass")) == pytest.approx(placed.kind.mass)
    top = models["table"].find("link/collision")
    assert _pose(top)[2] + float(top.findtext("geometry/box/size").split()[2]) / 2 == pytest.approx(TABLE_HEIGHT)

    camera = models["rgbd_camera"]
    pose = _pose(camera)
    np.testing.assert_allclose(pose[:3], CAMERA_POSITION)
    # Gazebo camera links look along x with z up: (forward, left, up) = (optical z, -optical x, -optical y)
    optical = look_at(CAMERA_POSITION, CAMERA_TARGET)
    expected = np.column_stack([optical[:, 2], -optical[:, 0], -optical[:, 1]])
    np.testing.assert_allclose(_rpy_matrix(*pose[3:]), expected, atol=1e-5)
    for sensor in camera.findall("link/sensor"):
        hfov = float(sensor.findtext("camera/horizontal_fov"))
        width, height = int(sensor.findtext("camera/image/width")), int(sensor.findtext("camera/image/height"))
        assert (width, height) == (640, 480)
        assert 2 * math.degrees(math.atan(math.tan(hfov / 2) * height / width)) == pytest.approx(CAMERA_FOVY_DEG,
                                                                                                 abs=1e-3)
    assert camera.find("link/sensor[@type='rgbd_camera']/topic").text == "rgbd"
