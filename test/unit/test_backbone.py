"""Backbone self-distillation (dino_vla/adaptation/backbone.py) and the colour-blind probe (probe.py) with the
tiny random DINOv2: the collapse measures on hand-made distributions, the losses' known values, the crops and
iBOT masks, a short run (finite losses, the result loads as the features model), a resumed run equal to an
uninterrupted one, Gram anchoring, clear errors, and the probe's k-NN and rendered crops."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import Dinov2Model

from dino_vla.adaptation.backbone import (DISTILLATION_FILE, TRAINING_FILE, CollapseWatch, Distillation, Views,
                                          draw_views, gram_loss, koleo_loss, nearest_neighbour_distance,
                                          pretrain_backbone, sinkhorn_knopp, teacher_temperature, unlabelled_frames)
from dino_vla.adaptation.probe import knn_accuracy, probe, render_object_crops
from dino_vla.adaptation.settings import BackboneDistillation
from dino_vla.dataset.format import DatasetError, DatasetWriter
from dino_vla.dataset.sim_recording import record_sim_demonstrations
from dino_vla.models.features import DinoFeatures
from dino_vla.models.loading import ModelUnavailableError
from dino_vla.training_state import TrainingStateError

# small enough for a few steps a second on one CPU thread
SMALL = BackboneDistillation(steps=3, batch_size=4, warmup_steps=1, prototypes=32, head_hidden=32, head_bottleneck=16,
                             global_size=56, local_size=28, local_crops=2, frame_short_side=64, log_every=1,
                             save_every=2, freeze_last_layer_steps=1, teacher_temperature_warmup=2)


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


def test_a_resumed_run_equals_an_uninterrupted_one(frames, tiny_models, tmp_path):
    whole = pretrain_backbone(frames, tmp_path / "whole", tiny_models.features, replace(SMALL, steps=4), threads=1)

    def interrupt(step: int, parts: dict) -> None:
        if step == 3:     # after the checkpoint of step 2 (save_every 2): the schedules are those of 4 steps
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain_backbone(frames, tmp_path / "split", tiny_models.features, replace(SMALL, steps=4), threads=1,
                          progress=interrupt)
    assert json.loads((tmp_path / "split" / TRAINING_FILE).read_text())["step"] == 2
    resumed = pretrain_backbone(frames, tmp_path / "split", tiny_models.features, replace(SMALL, steps=4),
                                resume=True, threads=1)
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
