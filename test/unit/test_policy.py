"""The VLA policy core: dataset format, tokens, network, checkpoints, training (overfit, resume) and the
run-time GraspPolicy, on tiny random DINOv2 weights and the real MiniLM text encoder."""
import math

import numpy as np
import pytest
import torch

from dino_vla.geometry.transforms import transform_from_pose
from dino_vla.config import CAMERA_POSE_IN_BASE
from dino_vla.geometry.depth import DepthFrame
from dino_vla.policy.checkpoint import CheckpointError, load_checkpoint, random_checkpoint, read_info
from dino_vla.dataset.format import ABSENT, Dataset, DatasetError, DatasetWriter, RecordedFrame
from dino_vla.language import parse
from dino_vla.policy.model import GraspPolicyNet, PolicyConfig, collate
from dino_vla.policy.runner import GraspPolicy, PolicyFailure
from dino_vla.dataset.sim_recording import record_sim_demonstrations
from dino_vla.policy.tokens import (GEOMETRY_DIM, POSITION_COLUMNS, REQUEST_COLOURS, REQUEST_DIM, REQUEST_RELATIONS,
                                    REQUEST_SIZES, TARGET_DIM, TOKENS_VERSION, ViewSettings, crop_feature,
                                    fold_angle, grasp_from_target, grasp_target, language_text, object_tokens,
                                    patch_weights, reference_vectors, request_vector)
from dino_vla.dataset.references import reference_objects
from dino_vla.policy.checkpoint import save_checkpoint
from dino_vla.policy.train import TrainSettings, train
from dino_vla.sim.mujoco_sim import TabletopSim
from dino_vla.sim.scene import CAMERA_FRAME, catalogue_object, varied_scene
from dino_vla.sim.tasks import TEMPLATES, TRAINING_SPLITS, draw_task
from dino_vla.types import CameraIntrinsics, Features, Grasp, Masks


def _frame(h=48, w=64, seed=0) -> RecordedFrame:
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), np.uint16)
    labels[5:20, 5:20], labels[25:40, 30:50] = 1, 2
    depth = rng.uniform(0.3, 2.0, (h, w)).astype(np.float32)
    depth[0, 0] = 0.0
    pose = transform_from_pose(CAMERA_POSE_IN_BASE, "base_link", "cam")
    return RecordedFrame(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), depth, labels, ("cup", "object"),
                         CameraIntrinsics(50.0, 51.0, 31.5, 23.5, w, h), pose, 123)


def _grasp(x=0.1, frame="base_link") -> Grasp:
    return Grasp(np.array([x, -0.2, 0.45]), np.array([0.0, 0.0, -1.0]), 0.3, 0.08, 1.0, "cup", frame)


# ---- dataset ------------------------------------------------------------------------------------------------

def test_dataset_round_trip(tmp_path):
    frame = _frame()
    with DatasetWriter(tmp_path / "ds", source="test") as writer:
        index = writer.add_frame(frame)
        writer.add_episode(index, "pick up the cup", _grasp(), target_object=0, success=True, extra={"seed": 3})
        writer.add_episode(index, "grab the mug", _grasp(0.2), target_object=None)
    ds = Dataset(tmp_path / "ds")
    assert len(ds) == 2 and ds.num_frames == 1 and ds.info["tasks"] == 2 and ds.info["source"] == "test"
    back = ds.frame(0)
    assert np.array_equal(back.rgb, frame.rgb) and np.array_equal(back.labels, frame.labels)
    assert np.allclose(back.depth_m, frame.depth_m, atol=0.0006) and back.depth_m[0, 0] == 0.0
    assert back.objects == frame.objects and back.intrinsics == frame.intrinsics and back.stamp_ns == 123
    assert np.allclose(back.camera_to_base.rotation, frame.camera_to_base.rotation)
    assert (back.camera_to_base.parent, back.camera_to_base.child) == ("base_link", "cam")
    first = ds.episodes[0]
    assert first.instruction == "pick up the cup" and first.target_object == 0 and first.success is True
    assert np.allclose(first.grasp_position, [0.1, -0.2, 0.45]) and first.extra == {"seed": 3}
    assert ds.episodes[1].task_index == 1 and ds.episodes[1].success is None
    # appending keeps what is there; writing over it by accident is refused
    with pytest.raises(DatasetError, match="already holds"):
        DatasetWriter(tmp_path / "ds", source="test")
    with DatasetWriter(tmp_path / "ds", source="test", append=True) as writer:
        writer.add_episode(writer.add_frame(frame), "pick up the cup", _grasp())
    ds = Dataset(tmp_path / "ds")
    assert len(ds) == 3 and ds.num_frames == 2 and ds.episodes[2].task_index == 0


def test_dataset_refuses_bad_input(tmp_path):
    frame = _frame()
    with pytest.raises(DatasetError, match="share one"):
        RecordedFrame(frame.rgb[:10], frame.depth_m, frame.labels, frame.objects, frame.intrinsics,
                      frame.camera_to_base)
    with pytest.raises(DatasetError, match="objects named"):
        RecordedFrame(frame.rgb, frame.depth_m, frame.labels, ("cup",), frame.intrinsics, frame.camera_to_base)
    with DatasetWriter(tmp_path / "ds", source="test") as writer:
        with pytest.raises(DatasetError, match="not been written"):
            writer.add_episode(0, "pick up the cup", _grasp())
        index = writer.add_frame(frame)
        with pytest.raises(DatasetError, match="actions are in"):
            writer.add_episode(index, "pick up the cup", _grasp(frame="camera"))
        with pytest.raises(DatasetError, match="non-finite"):
            writer.add_episode(index, "pick up the cup", _grasp(x=float("nan")))
    with pytest.raises(DatasetError, match="not a dataset"):
        Dataset(tmp_path / "nothing")


# ---- tokens and targets -------------------------------------------------------------------------------------

def test_fold_angle_and_grasp_target_round_trip():
    assert fold_angle(math.pi + 0.1, 2) == pytest.approx(0.1)
    assert fold_angle(math.pi / 2 + 0.1, 4) == pytest.approx(0.1)
    assert fold_angle(1.0, 0) == 0.0
    assert fold_angle(-math.pi / 2, 2) == pytest.approx(math.pi / 2)
    anchor = np.array([0.1, 0.05, 0.45, 0.4])
    target = grasp_target(np.array([0.11, 0.04, 0.46]), 0.4 + math.pi + 0.2, 0.09, anchor, symmetry=2)
    assert np.allclose(target, [0.01, -0.01, 0.01, 0.2, 0.09], atol=1e-6)
    grasp = grasp_from_target(target, anchor, "base_link", "cup", 0.9)
    assert np.allclose(grasp.position, [0.11, 0.04, 0.46]) and grasp.yaw == pytest.approx(0.6)
    assert grasp.width == pytest.approx(0.09) and grasp.frame == "base_link" and grasp.score == 0.9
    # round objects: any turn is the same grasp, so the target turn is 0
    assert grasp_target(np.zeros(3), 1.3, 0.09, anchor, symmetry=0)[3] == 0.0
    assert [catalogue_object(n).grasp_symmetry for n in ("box", "block", "cup", "can", "ball")] == [4, 2, 2, 0, 0]


def test_patch_weights_follow_the_centre_crop():
    features = Features(np.zeros(8), np.zeros((16, 16, 8), np.float32), 14, (224, 224), "m")
    whole = np.ones((480, 640), bool)
    assert np.allclose(patch_weights(whole, features, 0.875), 1.0)
    edges = np.zeros((480, 640), bool)
    edges[:, :60] = edges[:, -60:] = True          # the left/right strips the centre crop drops
    assert patch_weights(edges, features, 0.875).sum() == 0.0
    left_half = np.zeros((480, 640), bool)
    left_half[:, :320] = True
    w = patch_weights(left_half, features, 0.875)
    assert np.allclose(w[:, :8], 1.0) and np.allclose(w[:, 8:], 0.0)


def test_language_tokens_read_the_parse_not_the_wording():
    a = parse("could you please grab the big red mug to the left of the box")
    b = parse("big red mug left of box: lift it")
    assert language_text(a) == language_text(b) == "big red mug, left of, box"
    assert np.array_equal(request_vector(a), request_vector(b))
    assert language_text(parse("take the cup between the can and the bowl")) == "cup, between, can and bowl"
    assert language_text(parse("grab the cup nearest to the robot")) == "cup, nearest to the robot"


def test_request_vector_is_one_hots_of_colour_size_and_relation():
    def parts(text):
        v = request_vector(parse(text))
        c, z = len(REQUEST_COLOURS), len(REQUEST_SIZES)
        return (REQUEST_COLOURS[int(v[:c].argmax())], REQUEST_SIZES[int(v[c:c + z].argmax())],
                REQUEST_RELATIONS[int(v[c + z:-1].argmax())], v[-1], v[:-1].sum())

    assert parts("pick up the cup") == ("", "", "", 0.0, 3.0)
    assert parts("grab the small green cup") == ("green", "small", "", 0.0, 3.0)
    # a colour the camera's colour names do not cover is "other", not "none asked"
    assert parts("grab the brown cup")[0] == "other"
    assert parts("grab the cup behind the box")[2] == "behind"
    assert parts("grab the cup farthest from the robot")[2:4] == ("farthest", 1.0)
    assert parts("grab the cup farthest from the camera")[2:4] == ("farthest", 0.0)
    assert request_vector(parse("pick up the cup")).shape == (REQUEST_DIM,)


# ---- network ------------------------------------------------------------------------------------------------

def test_network_shapes_padding_and_normalisation():
    torch.manual_seed(0)
    net = GraspPolicyNet(PolicyConfig(vision_dim=8, language_dim=12, d_model=16, heads=2)).eval()
    rng = np.random.default_rng(0)
    requests = [rng.normal(size=REQUEST_DIM), rng.normal(size=REQUEST_DIM)]
    batch = collate([rng.normal(size=(5, 12)), rng.normal(size=(3, 12))], requests, [rng.normal(size=(16, 8))] * 2,
                    [rng.normal(size=(4, GEOMETRY_DIM)), rng.normal(size=(2, GEOMETRY_DIM))],
                    [rng.normal(size=(4, 8)), rng.normal(size=(2, 8))], [np.ones(4), np.ones(2)])
    logits, targets = net(batch)
    # column 0: "none of these", then one per object
    assert logits.shape == (2, 5) and targets.shape == (2, 4, TARGET_DIM)
    assert torch.isinf(logits[1, 3:]).all() and torch.isfinite(logits[0]).all() and torch.isfinite(logits[:, 0]).all()
    # padding must not change a shorter sample's outputs
    alone = collate([batch.language[1, :3].numpy()], [requests[1]], [batch.vision[1].numpy()],
                    [batch.geometry[1, :2].numpy()],
                    [batch.pooled[1, :2].numpy()], [np.ones(2)])
    assert torch.allclose(net(alone)[0][0], logits[1, :3], atol=1e-5)
    values = torch.as_tensor(rng.normal([0.0, 0.01, -0.02, 0.1, 0.08], [0.01, 0.01, 0.02, 0.3, 0.01],
                                        size=(50, TARGET_DIM)), dtype=torch.float32)
    net.fit_statistics(rng.normal(size=(50, GEOMETRY_DIM)), values.numpy())
    assert torch.allclose(net.denormalise_targets(net.normalise_targets(values)), values, atol=1e-6)
    assert net.normalise_targets(values).std(0).sub(1).abs().max() < 1e-3


def test_network_is_blind_to_object_order_and_sees_relative_positions():
    torch.manual_seed(0)
    net = GraspPolicyNet(PolicyConfig(vision_dim=8, language_dim=12, d_model=16, heads=2)).eval()
    rng = np.random.default_rng(1)
    geometry = rng.normal(size=(4, GEOMETRY_DIM))
    pooled = rng.normal(size=(4, 8))
    inputs = ([rng.normal(size=(5, 12))], [rng.normal(size=REQUEST_DIM)], [rng.normal(size=(16, 8))])
    logits = net(collate(*inputs, [geometry], [pooled], [np.ones(4)]))[0][0]
    order = [2, 0, 3, 1]
    shuffled = net(collate(*inputs, [geometry[order]], [pooled[order]], [np.ones(4)]))[0][0]
    assert torch.allclose(shuffled[1:], logits[1:][order], atol=1e-5) and torch.isclose(shuffled[0], logits[0])
    # moving one object away from the others changes the pair bias, so every choice's score
    moved = geometry.copy()
    moved[3, :2] += 0.3
    assert not torch.allclose(net(collate(*inputs, [moved], [pooled], [np.ones(4)]))[0][0][1:3], logits[1:3])


def test_reference_tokens_encode_each_reference_alone():
    def encode(text):      # a stand-in text encoder: one token per word, its length and first letter
        return np.array([[len(w), ord(w[0])] for w in text.split()], np.float32)

    assert reference_vectors(parse("grab the mug beside the jar"), encode).tolist() == [[3.0, ord("j")]]
    two = reference_vectors(parse("grab the ball between the glass and the red brick"), encode)
    assert two.shape == (2, 2) and two[1].tolist() == [(3 + 5) / 2, (ord("r") + ord("b")) / 2]
    # the same reference reads the same whatever the relation
    assert np.array_equal(reference_vectors(parse("grab the cup left of the jar"), encode),
                          reference_vectors(parse("grab the cup near the jar"), encode))
    assert len(reference_vectors(parse("grab the cup"), encode)) == 0
    assert len(reference_vectors(parse("grab the cup on the far left"), encode)) == 0
    # which recorded instance each reference noun names: only one of its kind counts
    assert reference_objects(("cup", "cup_2", "jar", "block"), ["jar", "brick", "mug", "plate"]) == [2, 3, None, None]
    assert reference_objects(("object", "object"), ["jar"]) == [None]


def test_relation_route_scores_objects_by_where_the_references_are():
    torch.manual_seed(0)
    net = GraspPolicyNet(PolicyConfig(vision_dim=8, language_dim=12, d_model=16, heads=2)).eval()
    rng = np.random.default_rng(2)
    geometry, pooled = rng.normal(size=(4, GEOMETRY_DIM)), rng.normal(size=(4, 8))
    request = request_vector(parse("grab the cup next to the jar"))
    inputs = ([rng.normal(size=(5, 12))], [request], [rng.normal(size=(16, 8))], [geometry], [pooled],
              [np.ones(4)])
    reference = rng.normal(size=(1, 12))
    logits, _, reference_logits = net(collate(*inputs, [reference]), with_references=True)
    assert reference_logits.shape == (1, 1, 4)
    # without references the relation route adds nothing
    none, _, empty = net(collate(*inputs), with_references=True)
    batch = collate(*inputs)
    assert empty.shape[1] == 1 and batch.reference_pad.all()
    assert torch.allclose(net(collate(*inputs, [np.zeros((0, 12))]))[0], none)
    assert not torch.allclose(logits[0, 1:], none[0, 1:])
    # in a batch, a sample without references is unaffected by another's
    two = collate(inputs[0] * 2, inputs[1] * 2, inputs[2] * 2, inputs[3] * 2, inputs[4] * 2, inputs[5] * 2,
                  [reference, np.zeros((0, 12))])
    both = net(two)[0]
    assert torch.allclose(both[0], logits[0], atol=1e-5) and torch.allclose(both[1], none[0], atol=1e-5)


def test_checkpoints_of_other_token_versions_are_refused(tmp_path):
    net = GraspPolicyNet(PolicyConfig(vision_dim=8, language_dim=12, d_model=16, heads=2,
                                      tokens_version=TOKENS_VERSION - 1))
    save_checkpoint(tmp_path / "old", net, "backbone", "text", {"untrained": True})
    with pytest.raises(CheckpointError, match=f"version {TOKENS_VERSION - 1} tokens.*builds version "
                                              f"{TOKENS_VERSION}.*train it again"):
        load_checkpoint(tmp_path / "old")


def test_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of heads"):
        PolicyConfig(vision_dim=8, language_dim=8, d_model=30, heads=4)
    with pytest.raises(ValueError, match="fusion_layers"):
        PolicyConfig(vision_dim=8, language_dim=8, fusion_layers=0)


# ---- training on simulator demonstrations -------------------------------------------------------------------

@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("demos") / "ds"
    counts = record_sim_demonstrations(root, scenes=3, first_seed=0)
    assert counts["frames"] == 3 and counts["episodes"] >= 9
    return root


def test_recorded_demonstrations_name_their_target_or_nothing(demos):
    ds = Dataset(demos)
    absent = coloured_absent = 0
    for e in ds.episodes:
        frame = ds.frame(e.frame_index)
        noun = parse(e.instruction).target.noun
        categories = {name.split("_")[0] for name in frame.objects}    # instance names: "cup", "cup_2"
        assert e.extra["split"] in TRAINING_SPLITS
        if e.target_object == ABSENT:
            # nothing in the scene is both the noun and (when one is asked for) the colour
            asked = parse(e.instruction).target
            spec = draw_task(e.extra["split"], e.extra["seed"], "train").spec
            assert not [o for o in spec.objects if o.kind.answers_to(asked.noun)
                        and asked.colour in (None, o.kind.colour)], e.instruction
            absent += 1
            coloured_absent += asked.colour is not None
            continue
        name = frame.objects[e.target_object]
        assert name == e.extra["target"] and catalogue_object(name.split("_")[0]).answers_to(noun)
        assert frame.mask(e.target_object).sum() > 30 and name.split("_")[0] in categories
    assert 0 < absent < len(ds.episodes) and coloured_absent > 0


def test_tiny_policy_overfits_a_few_demonstrations(demos, tiny_models, tmp_path):
    out = tmp_path / "ck"
    training = train(str(demos), str(out), tiny_models.features, {"d_model": 32, "feedforward": 64, "dropout": 0.0},
                     TrainSettings(epochs=60, batch_size=16, learning_rate=3e-3, validation_fraction=0.0))
    history = training["history"]
    assert history[-1]["loss"] < 0.25 * history[0]["loss"]
    net, info = load_checkpoint(out)
    from dino_vla.policy.train import cached_tokens, evaluate_table
    from dino_vla.models.features import DinoFeatures
    from dino_vla.models.text import TextEncoder

    table, _ = cached_tokens(Dataset(demos), tiny_models.features, info.config.view, TextEncoder.load(),
                             DinoFeatures.load(tiny_models.features))
    fit = evaluate_table(net, table, torch.arange(len(table)))
    assert fit["pointer_accuracy"] == 1.0
    assert fit["position_error_cm"] < 1.0 and fit["width_error_cm"] < 0.5


def test_training_resumes_step_for_step(demos, tiny_models, tmp_path):
    small = {"d_model": 16, "heads": 2, "feedforward": 32}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    settings = TrainSettings(epochs=2, batch_size=8)
    train(str(demos), str(straight), tiny_models.features, dict(small), settings)
    first = train(str(demos), str(resumed), tiny_models.features, dict(small), settings, stop_after_epoch=1)
    assert [h["epoch"] for h in first["history"]] == [1]
    second = train(str(demos), str(resumed), tiny_models.features, resume=True)
    assert [h["epoch"] for h in second["history"]] == [1, 2]
    a, b = load_checkpoint(straight)[0].state_dict(), load_checkpoint(resumed)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CheckpointError, match="not a policy checkpoint"):
        read_info(tmp_path)


# ---- run time -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim_observation(tiny_models):
    from dino_vla.models.features import DinoFeatures

    spec, _ = varied_scene(5)
    with TabletopSim(spec) as sim:
        sim.settle()
        frame = sim.render()
        everything, masks = sim.ground_truth_all(frame)
        depth = DepthFrame(frame.depth, sim.intrinsics(), CAMERA_FRAME)
        features = DinoFeatures.load(tiny_models.features).extract(frame.rgb)
        return list(everything.phrases), masks, depth, features, sim.camera_pose(), frame.rgb


def test_grasp_policy_decides_and_refuses(tiny_models, tmp_path, sim_observation):
    names, masks, depth, features, camera_pose, _ = sim_observation
    policy = GraspPolicy.load(random_checkpoint(tmp_path / "ck", tiny_models.features), device="cpu")
    # the features' model is the original directory, the checkpoint's backbone its copy: the same weights
    decision = policy.decide("pick up the cup", features, depth, masks, camera_pose, local_features=True)
    assert 0 <= decision.object_index < len(names) and 0 < decision.confidence <= 1
    assert decision.grasp.frame == "base_link" and decision.grasp.phrase == "cup" and decision.grasp.width >= 0
    # the grasp is near the chosen object: the network only adds an offset to its box
    assert np.linalg.norm(decision.grasp.position[:2]) < 0.5
    with pytest.raises(PolicyFailure) as err:
        policy.decide("dance", features, depth, masks, camera_pose)
    assert err.value.reason == "bad_instruction"
    refusing = GraspPolicy.load(random_checkpoint(tmp_path / "no", tiny_models.features, refuses=True), device="cpu")
    with pytest.raises(PolicyFailure, match="finds no 'cup' among the") as err:
        refusing.decide("pick up the cup", features, depth, masks, camera_pose, local_features=True)
    assert err.value.reason == "no_object"
    with pytest.raises(PolicyFailure) as err:
        policy.decide("pick up the cup", features, depth, Masks(masks.masks[:0], masks.scores[:0]), camera_pose,
                      local_features=True)
    assert err.value.reason == "no_object"
    wide = Features(features.cls, np.zeros((16, 16, 7), np.float32), 14, (224, 224), features.model)
    with pytest.raises(PolicyFailure, match="7-d") as err:
        policy.decide("pick up the cup", wide, depth, masks, camera_pose)
    assert err.value.reason == "feature_mismatch"
    other = Features(features.cls, features.patch_tokens, 14, (224, 224), "facebook/dinov2-small")
    with pytest.raises(PolicyFailure, match="trained on"):
        policy.decide("pick up the cup", other, depth, masks, camera_pose)
    # a received name is never opened as a path (one too long for the filesystem once crashed the node), and
    # a received directory of the same weights under another name does not count
    for name in ("x" * 5000, "bad\0name", tiny_models.features):
        received = Features(features.cls, features.patch_tokens, 14, (224, 224), name)
        with pytest.raises(PolicyFailure, match="trained on") as err:
            policy.decide("pick up the cup", received, depth, masks, camera_pose)
        assert err.value.reason == "feature_mismatch"
    no_depth = DepthFrame(np.zeros_like(depth.metres), depth.intrinsics, depth.frame)
    with pytest.raises(PolicyFailure) as err:
        policy.decide("pick up the cup", features, no_depth, masks, camera_pose, local_features=True)
    assert err.value.reason == "no_points"


def test_shipped_checkpoint_picks_held_out_scenes():
    """The checkpoint that ships with the package, on held-out seeds and held-out paraphrases, in MuJoCo."""
    from dino_vla.config import defaults
    from dino_vla.evaluation.policy import EVAL_FIRST_SEED, evaluate
    from dino_vla.policy.checkpoint import resolve_checkpoint

    report = evaluate(resolve_checkpoint("shipped"), defaults("pick"), 6, EVAL_FIRST_SEED + 500, progress=False)
    policy = report["overall"]["policy"]
    assert policy["correct_object_rate"] == 1.0 and policy["success_rate"] >= 5 / 6, report["overall"]
    assert all(any(e["instruction"].startswith(t.split("{}")[0]) for t in TEMPLATES["eval"])
               for e in report["episodes"])


def test_finetuning_trains_the_backbone_and_ships_it(demos, tiny_models, tmp_path, sim_observation):
    from safetensors.torch import load_file

    from dino_vla.models.features import DinoFeatures

    out = tmp_path / "tuned"
    training = train(str(demos), str(out), tiny_models.features, {"d_model": 16, "heads": 2, "feedforward": 32},
                     TrainSettings(epochs=2, batch_size=8, finetune_backbone=True, backbone_learning_rate=1e-3,
                                   validation_fraction=0.0))
    assert training["history"][-1]["epoch"] == 2
    before = load_file(f"{tiny_models.features}/model.safetensors")
    after = load_file(str(out / "backbone" / "model.safetensors"))
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    policy = GraspPolicy.load(str(out), device="cpu")
    assert policy.backbone == str((out / "backbone").resolve())
    names, masks, depth, features, camera_pose, _ = sim_observation
    with pytest.raises(PolicyFailure, match="trained on"):   # the untuned backbone's features are refused
        policy.decide("pick up the cup", features, depth, masks, camera_pose)
    tuned = DinoFeatures.load(policy.backbone)
    spec, _ = varied_scene(5)
    with TabletopSim(spec) as sim:
        sim.settle()
        frame = sim.render()
    decision = policy.decide("pick up the cup", tuned.extract(frame.rgb), depth, masks, camera_pose)
    assert decision.grasp.frame == "base_link"


def test_crop_features_and_position_geometry_in_object_tokens(tiny_models, sim_observation):
    """object_features "crop": each token's feature is the backbone's class token of the object's own crop;
    object_geometry "position": only the position columns are left."""
    from dino_vla.models.features import DinoFeatures
    from dino_vla.models.segmenter import OBJECT_CONTEXT, crop_window
    from dino_vla.types import tight_box

    _, masks, depth, features, camera_pose, rgb = sim_observation
    backbone = DinoFeatures.load(tiny_models.features)
    cropped_masks = []   # what the crop ran on: only masks that get a token (not the empty one added last)

    def crop(mask):
        cropped_masks.append(mask)
        return crop_feature(backbone.extract, rgb, mask)

    with_empty = np.concatenate([masks.masks, np.zeros((1, *rgb.shape[:2]), bool)])
    full = object_tokens(features, depth, masks.masks, camera_pose, ViewSettings(), masks.colours)
    cropped = object_tokens(features, depth, with_empty, camera_pose,
                            ViewSettings(object_features="crop", object_geometry="position"), masks.colours, crop)
    assert cropped.kept == full.kept and len(full) >= 3 and len(with_empty) - 1 in cropped.skipped
    assert len(cropped_masks) == len(cropped.kept)
    assert all(np.array_equal(m, with_empty[i]) for m, i in zip(cropped_masks, cropped.kept))
    for row, i in enumerate(cropped.kept):
        x0, y0, x1, y1 = crop_window(tight_box(masks.masks[i]), masks.masks[i].shape, OBJECT_CONTEXT)
        assert (x1 - x0) * (y1 - y0) < rgb.shape[0] * rgb.shape[1] / 4     # a crop, not the frame
        expected = backbone.extract(np.ascontiguousarray(rgb[y0:y1, x0:x1])).cls
        np.testing.assert_allclose(cropped.pooled[row], expected, rtol=1e-5, atol=1e-5)
        assert not np.allclose(cropped.pooled[row], full.pooled[row])
    others = [c for c in range(GEOMETRY_DIM) if c not in POSITION_COLUMNS]
    np.testing.assert_array_equal(cropped.geometry[:, list(POSITION_COLUMNS)], full.geometry[:, list(POSITION_COLUMNS)])
    assert not cropped.geometry[:, others].any() and full.geometry[:, others].any()
    with pytest.raises(ValueError, match="needs the masks' crop features"):
        object_tokens(features, depth, masks.masks, camera_pose, ViewSettings(object_features="crop"))
    with pytest.raises(ValueError, match="object_features must be one of"):
        ViewSettings(object_features="patches")
    with pytest.raises(ValueError, match="object_geometry must be one of"):
        ViewSettings(object_geometry="none")


def test_a_crop_feature_policy_trains_and_reads_the_image(demos, tiny_models, tmp_path, sim_observation):
    names, masks, depth, features, camera_pose, rgb = sim_observation
    out = tmp_path / "crop"
    view = {"object_features": "crop", "object_geometry": "position"}
    train(str(demos), str(out), tiny_models.features, {"d_model": 16, "heads": 2, "feedforward": 32, "view": view},
          TrainSettings(epochs=1, batch_size=8))
    policy = GraspPolicy.load(str(out), device="cpu")
    assert (policy.info.config.view.object_features, policy.info.config.view.object_geometry) == ("crop", "position")
    assert policy.needs_image and policy.crop_backbone is not None
    assert not GraspPolicy.load(random_checkpoint(tmp_path / "mask", tiny_models.features), "cpu").needs_image
    decision = policy.decide("pick up the cup", features, depth, masks, camera_pose, local_features=True, rgb=rgb)
    assert 0 <= decision.object_index < len(names)
    for image in (None, rgb[:-1]):
        with pytest.raises(PolicyFailure, match="needs the image the masks were made from") as err:
            policy.decide("pick up the cup", features, depth, masks, camera_pose, local_features=True, rgb=image)
        assert err.value.reason == "bad_input"
    with pytest.raises(ValueError, match="fine-tune with object_features 'mask'"):
        train(str(demos), str(tmp_path / "tuned"), tiny_models.features, {"view": view},
              TrainSettings(epochs=1, finetune_backbone=True))
