"""Backbone self-distillation (dino_vla/adaptation/backbone.py) and the colour-blind probe (probe.py) with the
tiny random DINOv2: the collapse measures on hand-made distributions, the losses' known values, the crops and
iBOT masks, a short run (finite losses, the result loads as the features model), a resumed run equal to an
uninterrupted one, Gram anchoring, clear errors, and the probe's k-NN and rendered crops."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import Dinov2Model

import dino_vla.adaptation
from dino_vla.adaptation.backbone import (DISTILLATION_FILE, NEUTRAL_BACKGROUND, NEUTRAL_PAINT, TRAINING_FILE,
                                          CollapseWatch, Distillation, ProjectionHead, Views, draw_object_views,
                                          draw_views, gram_loss, koleo_loss, nearest_neighbour_distance,
                                          object_crops, painted, pretrain_backbone, sinkhorn_knopp,
                                          teacher_temperature, unlabelled_frames)
from dino_vla.adaptation.probe import knn_accuracy, probe, render_object_crops
from dino_vla.adaptation.settings import OBJECT_VIEWS, BackboneDistillation, backbone_distillation
from dino_vla.dataset.format import DatasetError, DatasetWriter
from dino_vla.dataset.sim_recording import record_sim_demonstrations
from dino_vla.models.features import DinoFeatures
from dino_vla.models.loading import ModelUnavailableError
from dino_vla.training_state import TrainingStateError

# small enough for a few steps a second on one CPU thread
SMALL = BackboneDistillation(steps=3, batch_size=4, warmup_steps=1, prototypes=32, head_hidden=32, head_bottleneck=16,
                             global_size=56, local_size=28, local_crops=2, frame_short_side=64, log_every=1,
                             save_every=2, freeze_last_layer_steps=1, teacher_temperature_warmup=2)
# the same with object views (objects of the sim's frames are 300-3000 pixels)
OBJECTS = replace(SMALL, views="objects", global_scale=(0.7, 1.0), local_scale=(0.25, 0.5), head_batch_norm=True,
                  ibot_weight=0.0, min_object_pixels=100)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbone") / "ds"
    record_sim_demonstrations(root, scenes=3, first_seed=21)
    return root


# ---- collapse measures and losses on hand-made inputs ---------------------------------------------------------

def test_uniform_targets_are_a_collapse_at_log_k_and_sharp_ones_are_not():
    k = 64
    uniform = CollapseWatch.of(torch.full((8, k), 1 / k), torch.eye(8, 16))
    assert uniform.teacher_entropy == pytest.approx(math.log(k)) and uniform.log_k == pytest.approx(math.log(k))
    assert uniform.collapsed and uniform.collapse == "uniform"
    one_hot = torch.eye(8, k)
    sharp = CollapseWatch.of(one_hot, torch.eye(8, 16))
    assert sharp.teacher_entropy == pytest.approx(0.0, abs=1e-6) and not sharp.collapsed
    # orthogonal class tokens are sqrt(2) apart; identical ones 0 apart: every image one point
    assert sharp.nn_distance == pytest.approx(math.sqrt(2))
    same = CollapseWatch.of(one_hot, torch.ones(8, 16))
    assert same.nn_distance == pytest.approx(0.0, abs=1e-6) and same.collapse == "one point"


def test_koleo_is_minus_log_of_the_nearest_neighbour_distance():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]) * 3   # norm does not matter
    assert nearest_neighbour_distance(x).tolist() == pytest.approx([math.sqrt(2)] * 4)
    assert float(koleo_loss(x)) == pytest.approx(-math.log(math.sqrt(2)))
    near = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]])
    assert float(koleo_loss(near)) > 4     # crowded points cost a lot


def test_sinkhorn_targets_are_distributions_that_use_every_prototype_about_equally():
    torch.manual_seed(0)
    logits = torch.randn(64, 16) * 0.3 + torch.linspace(0, 0.5, 16)   # the last prototypes preferred
    raw = torch.softmax(logits / 0.1, dim=1).mean(0)
    q = sinkhorn_knopp(logits, 0.1)
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-4)
    # three iterations (DINOv2's) bring the usage near uniform; the raw teacher puts a quarter on one prototype
    assert raw.max() > 0.25 and raw.min() < 0.01
    assert q.mean(0).max() < 0.08 and q.mean(0).min() > 0.04


def test_gram_loss_is_zero_for_the_same_patch_similarities_only():
    a = torch.randn(2, 9, 8)
    assert float(gram_loss(a, a * 2)) == pytest.approx(0.0, abs=1e-7)     # scale-free: cosine similarities
    assert float(gram_loss(torch.randn(2, 9, 8), a)) > 0.01


def test_the_teacher_temperature_warms_up_linearly():
    s = BackboneDistillation(teacher_temperature_start=0.04, teacher_temperature=0.07, teacher_temperature_warmup=100)
    assert teacher_temperature(s, 0) == pytest.approx(0.04)
    assert teacher_temperature(s, 50) == pytest.approx(0.055)
    assert teacher_temperature(s, 100) == teacher_temperature(s, 5000) == pytest.approx(0.07)


# ---- crops, masks and one step --------------------------------------------------------------------------------

def test_views_have_the_crop_sizes_and_ibot_masks_asked_for(frames):
    images = unlabelled_frames(frames, 64)
    assert len(images) == 3 and min(images[0].shape[:2]) == 64
    mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    s = replace(SMALL, mask_probability=0.5, mask_ratio=(0.2, 0.4))
    views = draw_views(images, [0, 1, 2, 0], s, 14, mean, std, np.random.default_rng(0))
    assert views.global_crops.shape == (8, 3, 56, 56) and views.local_crops.shape == (8, 3, 28, 28)
    assert views.masks.shape == (8, 16)
    masked = views.masks.sum(1)
    assert (masked > 0).sum() == 4 and all(3 <= m <= 7 for m in masked[masked > 0].tolist())
    again = draw_views(images, [0, 1, 2, 0], s, 14, mean, std, np.random.default_rng(0))
    assert torch.equal(views.global_crops, again.global_crops) and torch.equal(views.masks, again.masks)


def test_masked_patches_reach_the_model_as_its_mask_token(tiny_models):
    model = Dinov2Model.from_pretrained(tiny_models.features)
    with torch.no_grad():
        model.embeddings.mask_token.fill_(5.0)
    net = Distillation(model, SMALL)
    pixels = torch.randn(2, 3, 56, 56)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, 3] = True
    with torch.no_grad():
        plain = net.student(pixel_values=pixels).last_hidden_state
        masked = net.student(pixel_values=pixels, bool_masked_pos=masks).last_hidden_state
    assert not torch.allclose(plain[0], masked[0]) and torch.allclose(plain[1], masked[1])
    loss, parts, watch = net.losses(Views(pixels, torch.randn(4, 3, 28, 28), masks), 0.04)
    assert math.isfinite(loss.item()) and set(parts) == {"dino", "ibot", "koleo", "loss"}
    assert 0 < watch.teacher_entropy <= watch.log_k + 1e-4


def test_the_teacher_sees_the_teacher_crops_when_there_are_some(tiny_models):
    net = Distillation(Dinov2Model.from_pretrained(tiny_models.features), SMALL)
    pixels, local = torch.randn(4, 3, 56, 56), torch.randn(4, 3, 28, 28)
    masks = torch.zeros(4, 16, dtype=torch.bool)
    _, _, own = net.losses(Views(pixels, local, masks), 0.04)
    # one image for every teacher crop: the teacher's class tokens are one point, whatever the student sees
    _, _, other = net.losses(Views(pixels, local, masks, pixels[:1].expand(4, -1, -1, -1)), 0.04)
    assert own.nn_distance > 0.01 and other.nn_distance < 1e-3 and other.collapse == "one point"


def test_heads_carry_batch_norm_only_when_asked():
    def norms(head):
        return sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules())

    assert norms(ProjectionHead(8, 16, 4, 6)) == 0 and norms(ProjectionHead(8, 16, 4, 6, batch_norm=True)) == 2


# ---- object views ---------------------------------------------------------------------------------------------

def test_object_views_settings_are_a_preset_that_what_is_given_overrides():
    objects = backbone_distillation("objects", learning_rate=None, global_size=64)
    assert objects.views == "objects" and objects.global_size == 64 and objects.head_batch_norm
    assert objects.learning_rate == OBJECT_VIEWS["learning_rate"] and objects.global_scale == (0.7, 1.0)
    assert backbone_distillation("frames", learning_rate=None) == BackboneDistillation()


def test_objects_are_cut_out_by_depth_with_their_region_as_alpha(frames):
    objects = object_crops(frames, OBJECTS)
    # 3 scenes of several objects each; one crop per region, two background windows per frame
    assert objects.frames == 3 and len(objects.crops) >= 6 and len(objects.backgrounds) == 6
    for crop in objects.crops:
        assert crop.shape == (56, 56, 4) and crop.dtype == np.uint8
        region = crop[..., 3] > 127
        # the crop is twice the region's box around it: the region fills a middle part of it
        assert 0.03 < region.mean() < 0.6
        ys, xs = np.nonzero(region)
        assert 14 <= ys.mean() <= 42 and 14 <= xs.mean() <= 42
    assert all(b.shape == (56, 56, 3) for b in objects.backgrounds)
    fewer = object_crops(frames, replace(OBJECTS, max_frames=1))
    assert fewer.frames == 1 and 0 < len(fewer.crops) < len(objects.crops)
    with pytest.raises(DatasetError, match="stands out of the table"):
        object_crops(frames, replace(OBJECTS, table_height_m=5.0))


def test_painting_keeps_the_shading_and_replaces_paint_and_background():
    crop = np.zeros((20, 20, 4), np.uint8)
    crop[..., :3] = (10, 200, 10)                                   # green surroundings
    crop[5:15, 5:15, :3] = np.linspace(40, 160, 10).astype(np.uint8)[None, :, None]   # a grey object, lit from one side
    crop[5:15, 5:15, 3] = 255
    background = np.full((20, 20, 3), (0, 0, 250), np.float32)
    out = painted(crop, np.array([100.0, 50.0, 0.0]), background).astype(np.float32)
    # outside the region grown by a pixel: the new background only
    assert (out[:4] == (0, 0, 250)).all() and (out[:, 16:] == (0, 0, 250)).all()
    # inside: the new paint, bright and dark as the object was (shading over its median)
    inside = out[5:15, 5:15]
    assert (inside[..., 2] == 0).all() and np.allclose(inside[..., 0], 2 * inside[..., 1], atol=1)
    shading = crop[7, 5:15, 0].astype(np.float32) / np.median(crop[5:15, 5:15, 0])
    assert np.allclose(inside[2, :, 1], 50 * shading, atol=1) and inside[2, :, 1].max() > 1.5 * inside[2, :, 1].min()


def test_object_views_show_the_teacher_the_object_neutral_and_the_student_it_painted(frames):
    objects = object_crops(frames, OBJECTS)
    mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)

    def draw(seed):
        return draw_object_views(objects, [0, 1, 2, 0], OBJECTS, 14, mean, std, np.random.default_rng(seed))

    views = draw(0)
    assert views.teacher_crops.shape == views.global_crops.shape == (8, 3, 56, 56)
    assert views.local_crops.shape == (8, 3, 28, 28) and views.masks.shape == (8, 16) and not views.masks.any()
    teacher = views.teacher_crops * 255
    # neutral: grey everywhere (R = G = B), the flat background's grey around the object
    assert torch.allclose(teacher[:, 0], teacher[:, 1], atol=1) and torch.allclose(teacher[:, 0], teacher[:, 2], atol=1)
    assert (teacher.round() == NEUTRAL_BACKGROUND).float().mean() > 0.3
    assert ((teacher - NEUTRAL_PAINT).abs() < 30).float().mean() > 0.02
    # painted: colours, and never the same twice for one object
    student = views.global_crops
    assert (student.std(dim=1) > 0.05).float().mean() > 0.3
    assert not torch.allclose(student[0], student[3])      # crop 0 twice in one batch: other paint, background
    again = draw(0)
    assert torch.equal(views.global_crops, again.global_crops) and torch.equal(views.teacher_crops, again.teacher_crops)
    assert not torch.equal(views.global_crops, draw(1).global_crops)


# ---- runs -----------------------------------------------------------------------------------------------------

def test_a_short_run_writes_a_backbone_the_features_model_loads(frames, tiny_models, tmp_path):
    seen = []
    summary = pretrain_backbone(frames, tmp_path / "bb", tiny_models.features, SMALL, threads=1,
                                progress=lambda step, parts: seen.append((step, parts)))
    assert summary["steps"] == 3 and summary["frames"] == 3 and [s for s, _ in seen] == [1, 2, 3]
    assert all(math.isfinite(p["loss"]) and p["teacher_entropy"] <= p["log_k"] + 1e-4 for _, p in seen)
    assert summary["log_k"] == pytest.approx(math.log(32), abs=1e-4)
    record = json.loads((tmp_path / "bb" / TRAINING_FILE).read_text())
    assert record["started_from"] == tiny_models.features and [h["step"] for h in record["history"]] == [1, 2, 3]
    features = DinoFeatures.load(str(tmp_path / "bb"), "cpu", "float32")
    out = features.extract(np.zeros((120, 160, 3), np.uint8))
    assert out.cls.shape == (32,) and np.isfinite(out.patch_tokens).all()
    start = Dinov2Model.from_pretrained(tiny_models.features).state_dict()
    moved = [k for k, v in features.model.state_dict().items() if not torch.equal(v, start[k])]
    assert moved    # the EMA teacher followed the student


@pytest.mark.parametrize("settings", [SMALL, OBJECTS], ids=["frames", "objects"])
def test_a_resumed_run_equals_an_uninterrupted_one(frames, tiny_models, tmp_path, settings):
    settings = replace(settings, steps=4)
    whole = pretrain_backbone(frames, tmp_path / "whole", tiny_models.features, settings, threads=1)

    def interrupt(step: int, parts: dict) -> None:
        if step == 3:     # after the checkpoint of step 2 (save_every 2): the schedules are those of 4 steps
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain_backbone(frames, tmp_path / "split", tiny_models.features, settings, threads=1, progress=interrupt)
    assert json.loads((tmp_path / "split" / TRAINING_FILE).read_text())["step"] == 2
    resumed = pretrain_backbone(frames, tmp_path / "split", tiny_models.features, settings, resume=True, threads=1)
    assert resumed["steps"] == whole["steps"] == 4 and resumed["last"] == whole["last"]
    for name in ("model.safetensors", DISTILLATION_FILE):
        a, b = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "split" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    history = json.loads((tmp_path / "split" / TRAINING_FILE).read_text())["history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4]


def test_gram_anchoring_and_dino_centring(frames, tiny_models, tmp_path):
    summary = pretrain_backbone(frames, tmp_path / "gram", tiny_models.features,
                                replace(SMALL, steps=2, gram_weight=1.0, centering="centre"), threads=1)
    assert math.isfinite(summary["last"]["gram"]) and summary["last"]["gram"] >= 0
    state = load_file(str(tmp_path / "gram" / DISTILLATION_FILE))
    assert any(k.startswith("anchor.") for k in state) and state["centre"].abs().sum() > 0


def test_an_image_folder_is_data_too(tiny_models, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    summary = pretrain_backbone(folder, tmp_path / "bb", tiny_models.features, replace(SMALL, steps=1), threads=1)
    assert summary["frames"] == 3


def test_clear_errors(frames, tiny_models, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no frames"):
        pretrain_backbone(tmp_path / "empty", tmp_path / "o1", tiny_models.features, SMALL)
    with pytest.raises(DatasetError, match="neither a dataset nor a folder"):
        pretrain_backbone(tmp_path / "missing", tmp_path / "o1", tiny_models.features, SMALL)
    DatasetWriter(tmp_path / "no_frames", source="test").close()
    with pytest.raises(DatasetError, match="holds no frames"):
        pretrain_backbone(tmp_path / "no_frames", tmp_path / "o1", tiny_models.features, SMALL)
    (tmp_path / "broken" / "meta").mkdir(parents=True)
    (tmp_path / "broken" / "meta" / "info.json").write_text(json.dumps({"format": "other", "version": 9}))
    with pytest.raises(DatasetError, match="this reader knows"):
        pretrain_backbone(tmp_path / "broken", tmp_path / "o1", tiny_models.features, SMALL)
    with pytest.raises(ModelUnavailableError, match="holds a 'sam' model, not a DINOv2 backbone"):
        pretrain_backbone(frames, tmp_path / "o1", tiny_models.segmenter, SMALL)
    with pytest.raises(ValueError, match="centering must be"):
        pretrain_backbone(frames, tmp_path / "o1", tiny_models.features, replace(SMALL, centering="mean"))
    with pytest.raises(ValueError, match="views must be one of"):
        pretrain_backbone(frames, tmp_path / "o1", tiny_models.features, replace(SMALL, views="tiles"))
    with pytest.raises(ValueError, match="object views mirror the student's crops only"):
        pretrain_backbone(frames, tmp_path / "o1", tiny_models.features, replace(OBJECTS, ibot_weight=1.0))
    with pytest.raises(DatasetError, match="cuts objects out by depth.*not a folder of images"):
        pretrain_backbone(tmp_path / "empty", tmp_path / "o1", tiny_models.features, OBJECTS)
    DatasetWriter(tmp_path / "no_frames_either", source="test").close()
    with pytest.raises(DatasetError, match="holds no frames"):
        pretrain_backbone(tmp_path / "no_frames_either", tmp_path / "o1", tiny_models.features, OBJECTS)
    with pytest.raises(TrainingStateError, match="no pretrain_backbone.json to resume from"):
        pretrain_backbone(frames, tmp_path / "o1", tiny_models.features, SMALL, resume=True)
    pretrain_backbone(frames, tmp_path / "o2", tiny_models.features, replace(SMALL, steps=1), threads=1)
    with pytest.raises(TrainingStateError, match="already holds a pretrained backbone"):
        pretrain_backbone(frames, tmp_path / "o2", tiny_models.features, SMALL)


# ---- the probe ------------------------------------------------------------------------------------------------

def test_knn_accuracy_on_hand_made_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8) * 5
    refs = np.concatenate([c + rng.normal(0, 0.3, (10, 8)) for c in centres])
    queries = np.concatenate([c + rng.normal(0, 0.3, (4, 8)) for c in centres])
    labels, query_labels = [n for n in "abc" for _ in range(10)], [n for n in "abc" for _ in range(4)]
    assert knn_accuracy(refs, labels, queries, query_labels, k=5) == 1.0
    assert knn_accuracy(refs, labels, queries, query_labels[4:] + query_labels[:4], k=5) == 0.0


def test_colour_blind_crops_paint_each_scene_one_colour_and_the_probe_scores_them(features_model):
    crops = render_object_crops(3, first_seed=7_000_000, per_scene=4)
    assert len(crops.images) >= 6 and set(crops.scenes) == {7_000_000, 7_000_001, 7_000_002}
    assert all(img.ndim == 3 and abs(img.shape[0] - img.shape[1]) <= 1 for img in crops.images)   # square windows
    usual = render_object_crops(3, first_seed=7_000_000, per_scene=4, paint="usual")
    assert usual.categories == crops.categories       # same scenes, only the paint differs
    assert any(not np.array_equal(a, b) for a, b in zip(usual.images, crops.images))
    scores = probe(features_model, crops, k=3)
    assert scores.references + scores.queries == len(crops.images) and 0 <= scores.cls_accuracy <= 1
    with pytest.raises(ValueError, match="paint must be one of"):
        render_object_crops(3, paint="rainbow")


def test_the_shipped_object_view_backbone_tells_shapes_apart_where_its_random_start_does_not(tiny_models):
    """dino_vla/adaptation/checkpoints/sim-tiny-dinov2-objects (README there) on the colour-blind probe's 150
    scenes, against the tiny random DINOv2 it was self-distilled from: the issue's target is +20 points. And its
    run never collapsed."""
    shipped = Path(dino_vla.adaptation.__file__).parent / "checkpoints" / "sim-tiny-dinov2-objects"
    record = json.loads((shipped / TRAINING_FILE).read_text())
    assert record["settings"]["views"] == "objects" and record["step"] == 3000
    assert not any(h["collapse"] for h in record["history"])
    crops = render_object_crops(150)
    start = probe(DinoFeatures.load(tiny_models.features, "cpu", "float32"), crops)
    trained = probe(DinoFeatures.load(str(shipped), "cpu", "float32"), crops)
    assert start.queries == trained.queries == 250 and start.cls_accuracy < 0.2
    assert trained.cls_accuracy >= start.cls_accuracy + 0.20, (start, trained)
