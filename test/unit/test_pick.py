"""The ROS-free pick decision (dino_vla.pick) on rendered MuJoCo table-top scenes, and the parameter
schema it is configured from (dino_vla.config)."""
import array
import math
import os
import re

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from dino_vla import pick  # noqa: E402
from dino_vla.config import (CAMERA_POSE_IN_BASE, ConfigError, ParamSpec, config_dir, load_config,  # noqa: E402
                             validate_params)
from dino_vla.geometry.grasp_planner import REFUSAL_REASONS  # noqa: E402
from dino_vla.geometry.localise import NoPointsError  # noqa: E402
from dino_vla.geometry.transforms import transform_from_pose  # noqa: E402
from dino_vla.instruction import parse_instruction  # noqa: E402
from dino_vla.geometry.depth import DepthFrame  # noqa: E402
from dino_vla.pick import (PickFailure, PickPlanner, PickSettings,  # noqa: E402
                           localise_detections)
from dino_vla.sim.mujoco_sim import TabletopSim  # noqa: E402
from dino_vla.sim.scene import BASE_FRAME, CAMERA_FRAME, TABLE_HEIGHT, random_scene  # noqa: E402
from dino_vla.sim.stand_in import ground_truth_perception  # noqa: E402
from dino_vla.types import Detections, Masks, Object3D  # noqa: E402

CONFIG_FILES = ("perception.yaml", "pick.yaml", "sim.yaml")
SEEDS = (0, 1, 2)
XY_TOLERANCE = 0.015


@pytest.fixture(scope="module", autouse=True)
def _mujoco_cwd(tmp_path_factory):
    """MuJoCo writes MUJOCO_LOG.TXT into the working directory: keep it out of the checkout."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("mujoco"))
        yield


@pytest.fixture(scope="module")
def params(_mujoco_cwd):
    return load_config(*(config_dir() / name for name in CONFIG_FILES))["pick"]


def planner(params, **overrides) -> PickPlanner:
    return PickPlanner(PickSettings.from_params(validate_params("pick", {**params, **overrides})))


class Scene:
    """One settled, rendered scene that is never executed on (module-scoped, shared by the tests)."""

    def __init__(self, seed: int):
        self.sim = TabletopSim(random_scene(seed, target="cup", n_distractors=3))
        self.sim.settle()
        self.frame = self.sim.render()
        self.camera = self.sim.camera_pose()
        self.poses = self.sim.object_poses()

    def depth_frame(self, depth=None, frame=CAMERA_FRAME) -> DepthFrame:
        return DepthFrame(self.frame.depth if depth is None else depth, self.sim.intrinsics(), frame)

    def perceive(self, phrases):
        return ground_truth_perception(self.sim, self.frame, phrases)

    def xy(self, name):
        return self.poses[name].translation[:2]


@pytest.fixture(scope="module")
def scene(_mujoco_cwd):
    """Seed 0: cup, bottle, block and can; the cup and the block are both in view."""
    s = Scene(0)
    assert {"cup", "block"} <= set(s.sim.object_names)
    yield s
    s.sim.close()


def rescored(detections: Detections, scores) -> Detections:
    return Detections(detections.boxes, np.asarray(scores, np.float32), detections.phrases, detections.image_size)


# ---- configuration --------------------------------------------------------------------------------------

def test_settings_from_the_shipped_config(params):
    settings = PickSettings.from_params(params)
    assert settings.workspace.frame == "base_link"
    assert settings.workspace.min_xyz == (-0.45, -0.35, 0.35)
    assert settings.workspace.max_xyz == (0.45, 0.35, 0.9)
    assert settings.workspace.table_height_m == pytest.approx(TABLE_HEIGHT)
    assert settings.gripper.max_width_m == pytest.approx(0.12)
    assert settings.localiser.min_points == params["min_points"]
    # sim.yaml is read last and lets the simulated arm move; pick.yaml alone keeps it a dry run
    assert params["dry_run"] is False
    assert load_config(*(config_dir() / n for n in CONFIG_FILES[:2]))["pick"]["dry_run"] is True


def test_default_camera_pose_is_the_simulated_camera(scene, params):
    expected = scene.sim.camera_pose()
    for pose in (CAMERA_POSE_IN_BASE, params["camera_pose_in_target"]):
        configured = transform_from_pose(pose, "base_link", CAMERA_FRAME)
        np.testing.assert_allclose(configured.rotation, expected.rotation, atol=1e-5)
        np.testing.assert_allclose(configured.translation, expected.translation, atol=1e-6)
    assert (expected.parent, expected.child) == ("base_link", CAMERA_FRAME)


ARRAY = ParamSpec("workspace_min", (-0.45, -0.35, 0.35), "test array")


@pytest.mark.parametrize("value,expected", [
    ([-1, 0, 2], (-1.0, 0.0, 2.0)),
    ((0.1, -0.2, 0.3), (0.1, -0.2, 0.3)),
    (array.array("d", [1.5, 2.5, 3.5]), (1.5, 2.5, 3.5)),     # what rclpy hands a double-array parameter
])
def test_array_param_accepts_three_numbers(value, expected):
    out = ARRAY.validate(value)
    assert out == expected and type(out) is tuple
    assert all(type(v) is float for v in out)


@pytest.mark.parametrize("value", [
    [1.0, 2.0], [1.0, 2.0, 3.0, 4.0], [], ["a", 0.0, 0.0], "1,2,3", "abc", [float("nan"), 0.0, 0.0],
    [float("inf"), 0.0, 0.0], [True, 0.0, 0.0], [0.0, False, 1.0], 1.0, None, {"x": 1},
])
def test_array_param_rejects(value):
    with pytest.raises(ConfigError, match="workspace_min"):
        ARRAY.validate(value)
    with pytest.raises(ConfigError, match=r"pick: workspace_min: expected 3 finite numbers"):
        validate_params("pick", {"workspace_min": value})


def test_array_param_through_validate_params():
    out = validate_params("pick", {"workspace_min": [0, -1, 1], "workspace_max": [1, 2, 3]})
    assert out["workspace_min"] == (0.0, -1.0, 1.0) and out["workspace_max"] == (1.0, 2.0, 3.0)
    assert out["gripper_max_width_m"] == 0.12   # untouched parameters keep their defaults
    with pytest.raises(ConfigError, match="camera_pose_in_target"):
        validate_params("pick", {"camera_pose_in_target": [0.0] * 6})


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_later_files_override_earlier_ones_per_parameter(tmp_path):
    first = write(tmp_path, "a.yaml", """
/**/pick:
  ros__parameters:
    gripper_max_width_m: 0.08
    workspace_min: [-0.3, -0.2, 0.3]
    table_height_m: 0.5
/**/detector:
  ros__parameters:
    box_threshold: 0.5
""")
    second = write(tmp_path, "b.yaml", """
/pick:
  ros__parameters:
    gripper_max_width_m: 0.1
    workspace_max: [0.3, 0.2, 1]
some_other_node:
  ros__parameters:
    anything: 1
""")
    third = write(tmp_path, "c.yaml", """
pick:
  ros__parameters:
    table_height_m: 0.45
""")
    out = load_config(first, second, third)
    p = out["pick"]
    assert p["gripper_max_width_m"] == 0.1                    # b overrides a
    assert p["workspace_min"] == (-0.3, -0.2, 0.3)            # only in a: kept
    assert p["workspace_max"] == (0.3, 0.2, 1.0)              # only in b
    assert p["table_height_m"] == 0.45                        # c overrides a
    assert p["gripper_clearance_m"] == 0.01                   # in no file: default
    assert out["detector"]["box_threshold"] == 0.5
    assert out["localiser"]["depth_max_m"] == 3.0
    # the order matters
    assert load_config(second, first)["pick"]["gripper_max_width_m"] == 0.08
    assert load_config(third, first)["pick"]["table_height_m"] == 0.5


def test_load_config_errors_name_the_file_and_parameter(tmp_path):
    good = write(tmp_path, "good.yaml", "/**/pick:\n  ros__parameters:\n    workspace_min: [0, 0, 0]\n")
    bad = write(tmp_path, "bad.yaml", "/**/pick:\n  ros__parameters:\n    workspace_max: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*workspace_max"):
        load_config(good, bad)
    typo = write(tmp_path, "typo.yaml", "/**/pick:\n  ros__parameters:\n    workspace_minn: [0, 0, 0]\n")
    with pytest.raises(ConfigError, match="workspace_minn"):
        load_config(typo)
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


# ---- planning on the simulator --------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_plan_and_execute_lifts_the_cup(seed, params, _mujoco_cwd):
    with TabletopSim(random_scene(seed, target="cup", n_distractors=3)) as sim:
        sim.settle()
        frame = sim.render()
        truth = sim.object_poses()["cup"].translation
        detections, masks = ground_truth_perception(sim, frame, ["cup"])
        assert detections.phrases == ("cup",)
        plan = planner(params).plan(DepthFrame(frame.depth, sim.intrinsics(), CAMERA_FRAME), detections, masks,
                                    "cup", transform_from_pose(CAMERA_POSE_IN_BASE, BASE_FRAME, CAMERA_FRAME))
        grasp = plan.grasp
        assert (plan.target_phrase, plan.detection_index, plan.candidates) == ("cup", 0, 1)
        assert plan.chosen.frame == BASE_FRAME and grasp.frame == BASE_FRAME and grasp.phrase == "cup"
        assert np.linalg.norm(grasp.position[:2] - truth[:2]) < XY_TOLERANCE
        assert np.linalg.norm(plan.chosen.centroid[:2] - truth[:2]) < 0.03
        # between the table and the cup's rim (0.10 m tall)
        assert TABLE_HEIGHT + 0.005 <= grasp.position[2] < TABLE_HEIGHT + 0.10
        np.testing.assert_allclose(grasp.approach, [0.0, 0.0, -1.0])
        assert 0.07 < grasp.width <= 0.12 and 0.0 < grasp.score < 1.0 and math.isfinite(grasp.yaw)
        outcome = sim.execute(grasp)
        assert outcome.success, outcome.reason
        assert outcome.lifted_object == "cup" and outcome.matches_phrase


def test_millimetre_depth_plans_the_same_grasp(scene, params):
    detections, masks = scene.perceive(["cup"])
    metres = planner(params).plan(scene.depth_frame(), detections, masks, "cup", scene.camera).grasp
    millimetres = (scene.frame.depth * 1000).round().astype(np.uint16)
    mm = planner(params).plan(scene.depth_frame(millimetres), detections, masks, "cup", scene.camera).grasp
    np.testing.assert_allclose(mm.position, metres.position, atol=0.003)
    assert mm.width == pytest.approx(metres.width, abs=0.003)


# ---- failures -------------------------------------------------------------------------------------------

def failure(fn) -> PickFailure:
    with pytest.raises(PickFailure) as info:
        fn()
    err = info.value
    assert err.reason in pick.FAILURE_REASONS
    return err


def test_refusal_reasons_are_pick_failure_reasons():
    assert set(REFUSAL_REASONS) <= set(pick.FAILURE_REASONS)
    assert len(set(pick.FAILURE_REASONS)) == len(pick.FAILURE_REASONS)


def test_no_object_lists_what_was_seen(scene, params):
    detections, masks = scene.perceive(["cup", "block"])
    err = failure(lambda: planner(params).plan(scene.depth_frame(), detections, masks, "ball", scene.camera))
    assert err.reason == "no_object"
    assert "'ball'" in str(err) and "block, cup" in str(err)
    empty = Detections.empty(scene.frame.depth.shape)
    no_masks = Masks(np.zeros((0, *scene.frame.depth.shape), bool), np.zeros(0, np.float32))
    err = failure(lambda: planner(params).plan(scene.depth_frame(), empty, no_masks, "cup", scene.camera))
    assert err.reason == "no_object" and "nothing" in str(err)


def test_no_points_when_the_mask_has_no_depth(scene, params):
    detections, masks = scene.perceive(["cup", "block"])
    depth = scene.frame.depth.copy()
    depth[masks.masks[0]] = 0.0
    err = failure(lambda: planner(params).plan(scene.depth_frame(depth), detections, masks, "cup", scene.camera))
    assert err.reason == "no_points"
    message = str(err)
    assert "'cup'" in message and "1 'cup' detection" in message
    assert f"{int(masks.masks[0].sum())} px in mask, 0 with depth" in message
    # the block's depth is untouched: it is still plannable from the same frame
    plan = planner(params).plan(scene.depth_frame(depth), detections, masks, "block", scene.camera)
    assert np.linalg.norm(plan.grasp.position[:2] - scene.xy("block")) < XY_TOLERANCE


def test_wrong_camera_frame(scene, params):
    detections, masks = scene.perceive(["cup"])
    err = failure(lambda: planner(params).plan(scene.depth_frame(frame="camera_depth_optical_frame"),
                                               detections, masks, "cup", scene.camera))
    assert err.reason == "wrong_frame"
    assert "camera_depth_optical_frame" in str(err) and CAMERA_FRAME in str(err)
    # a camera pose in another frame than the planner's target frame is refused by the grasp planner
    other = transform_from_pose(CAMERA_POSE_IN_BASE, "world", CAMERA_FRAME)
    err = failure(lambda: planner(params).plan(scene.depth_frame(), detections, masks, "cup", other))
    assert err.reason == "wrong_frame" and "'world'" in str(err) and "'base_link'" in str(err)


def test_outside_workspace(scene, params):
    detections, masks = scene.perceive(["cup"])
    tiny = planner(params, workspace_min=[0.30, 0.30, 0.35], workspace_max=[0.45, 0.35, 0.90])
    err = failure(lambda: tiny.plan(scene.depth_frame(), detections, masks, "cup", scene.camera))
    assert err.reason == "outside_workspace"
    found = re.search(r"x (-?\d+\.\d{3}) not in \[0\.3, 0\.45\]", str(err))
    assert found, str(err)
    assert float(found.group(1)) == pytest.approx(scene.xy("cup")[0], abs=XY_TOLERANCE)
    assert "'cup'" in str(err)


def test_too_wide(scene, params):
    detections, masks = scene.perceive(["cup"])
    narrow = planner(params, gripper_max_width_m=0.03)
    err = failure(lambda: narrow.plan(scene.depth_frame(), detections, masks, "cup", scene.camera))
    assert err.reason == "too_wide"
    found = re.search(r"'cup' is (\d\.\d{3}) m across", str(err))
    assert found, str(err)
    assert 0.06 <= float(found.group(1)) <= 0.10     # the cup body is 0.07 m across
    assert "0.030 m" in str(err) and "0.010 m clearance" in str(err)


# ---- which object is grasped ----------------------------------------------------------------------------

@pytest.mark.parametrize("instruction", [None, "grab the red cup next to the block"])
def test_reference_objects_are_never_grasped(scene, params, instruction):
    if instruction is None:
        target, phrases = "cup", ("cup", "block")
    else:
        query = parse_instruction(instruction)
        target, phrases = query.target, query.phrases
        assert phrases == ("red cup", "block")
    detections, masks = scene.perceive(phrases)
    assert detections.phrases == phrases
    # the detector is far surer of the reference object than of the target
    detections = rescored(detections, [0.3, 0.95])
    plan = planner(params).plan(scene.depth_frame(), detections, masks, target, scene.camera)
    assert plan.detection_index == 0 and plan.candidates == 1
    assert plan.chosen.phrase == target and plan.grasp.phrase == target
    assert np.linalg.norm(plan.grasp.position[:2] - scene.xy("cup")) < XY_TOLERANCE
    assert np.linalg.norm(plan.grasp.position[:2] - scene.xy("block")) > 0.05


@pytest.fixture(scope="module")
def three_cups(scene):
    """Three "cup" detections: one with an empty mask, the block mislabelled as a cup, and the real cup."""
    (_, masks) = scene.perceive(["cup", "block"])
    cup, block = masks.masks
    empty = np.zeros_like(cup)
    return {"empty": empty, "block": block, "cup": cup}


def cup_detections(scene, three_cups, order, scores):
    masks = np.stack([three_cups[name] for name in order])
    boxes = np.array([[0, 0, 10, 10]] * len(order), np.float32)
    return (Detections(boxes, np.asarray(scores, np.float32), ("cup",) * len(order), scene.frame.depth.shape),
            Masks(masks, np.ones(len(order), np.float32)))


@pytest.mark.parametrize("order,scores", [
    (("empty", "block", "cup"), (0.95, 0.9, 0.6)),
    (("cup", "empty", "block"), (0.6, 0.95, 0.9)),
    (("block", "cup", "empty"), (0.9, 0.6, 0.95)),
])
def test_best_scoring_detection_with_depth_is_chosen(scene, params, three_cups, order, scores):
    detections, masks = cup_detections(scene, three_cups, order, scores)
    plan = planner(params).plan(scene.depth_frame(), detections, masks, "cup", scene.camera)
    # the empty mask scores best but has no points: the next best (the block) is grasped; the cup scores
    # under RIVAL_SCORE_RATIO of it, so it is no rival
    assert plan.detection_index == order.index("block") and plan.candidates == 2   # objects with depth
    assert plan.chosen.score == pytest.approx(0.9)
    assert np.linalg.norm(plan.grasp.position[:2] - scene.xy("block")) < XY_TOLERANCE
    # without depth on the block, the real cup (lowest score) is the one left
    depth = scene.frame.depth.copy()
    depth[three_cups["block"]] = 0.0
    plan = planner(params).plan(scene.depth_frame(depth), detections, masks, "cup", scene.camera)
    assert plan.detection_index == order.index("cup") and plan.candidates == 1
    assert np.linalg.norm(plan.grasp.position[:2] - scene.xy("cup")) < XY_TOLERANCE


# ---- localise_detections ----------------------------------------------------------------------------------

def test_localise_detections_one_entry_per_detection(scene, params, three_cups):
    detections, masks = cup_detections(scene, three_cups, ("block", "empty", "cup"), (0.9, 0.8, 0.7))
    settings = PickSettings.from_params(params).localiser
    in_camera = localise_detections(scene.depth_frame(), detections, masks, settings)
    in_base = localise_detections(scene.depth_frame(), detections, masks, settings, scene.camera)
    for located in (in_camera, in_base):
        assert len(located) == 3
        assert isinstance(located[0], Object3D) and isinstance(located[2], Object3D)
        assert isinstance(located[1], NoPointsError) and "mask 0 px" in str(located[1])
    assert [located.frame for located in (in_camera[0], in_camera[2])] == [CAMERA_FRAME] * 2
    assert [located.frame for located in (in_base[0], in_base[2])] == [BASE_FRAME] * 2
    assert [in_base[0].score, in_base[2].score] == pytest.approx([0.9, 0.7])
    # same objects, two frames
    for i, name in ((0, "block"), (2, "cup")):
        np.testing.assert_allclose(in_base[i].centroid, scene.camera.apply(in_camera[i].centroid), atol=1e-9)
        assert np.linalg.norm(in_base[i].points.mean(0)[:2] - scene.xy(name)) < 0.04
    # a mask with depth only outside [depth_min, depth_max]
    far = scene.frame.depth.copy()
    far[three_cups["cup"]] = 5.0
    located = localise_detections(scene.depth_frame(far), detections, masks, settings)
    assert isinstance(located[0], Object3D) and isinstance(located[2], NoPointsError)
    assert "0 with depth in [0.1, 3.0] m" in str(located[2])


def test_localise_detections_needs_one_mask_per_detection(scene, params, three_cups):
    detections, masks = cup_detections(scene, three_cups, ("block", "cup"), (0.9, 0.7))
    settings = PickSettings.from_params(params).localiser
    with pytest.raises(ValueError, match="1 masks for 2 detections"):
        localise_detections(scene.depth_frame(), detections, Masks(masks.masks[:1], masks.scores[:1]), settings)
    with pytest.raises(ValueError, match="masks"):
        planner(params).plan(scene.depth_frame(), detections, Masks(masks.masks[:1], masks.scores[:1]), "cup",
                             scene.camera)
