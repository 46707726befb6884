"""Detector training and box metrics (dino_vla/adaptation/detector.py) with the tiny random Grounding DINO on a
few recorded sim frames: transformers' batched loss fixed (on a batch where upstream gets it wrong), what the
prompts and targets are, a resumed run equal to an uninterrupted one, two DistributedDataParallel processes on
CPU (torchrun, gloo), clear errors, and AP50 / recall / top-1 on hand-made boxes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, GroundingDinoForObjectDetection

from dino_vla.adaptation.detector import (Examples, FrameObject, FrameTruth, average_precision,
                                          batched_grounding_dino_loss, evaluate_boxes, finetune_detector,
                                          instruction_prompt, match, scene_prompt)
from dino_vla.adaptation.settings import DetectorTraining
from dino_vla.dataset.format import Dataset, DatasetError, DatasetWriter
from dino_vla.geometry.boxes import box_iou
from dino_vla.dataset.sim_recording import record_sim_demonstrations
from dino_vla.instruction import parse_instruction
from dino_vla.models.detector import GroundingDetector, PromptCache, max_prompt_length
from dino_vla.models.loading import ModelUnavailableError
from dino_vla.training_state import TrainingStateError

FAST = dict(batch_size=2, validation_frames=2)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("det") / "ds"
    record_sim_demonstrations(root, scenes=4, first_seed=21)
    return root


@pytest.fixture(scope="module")
def model_and_processor(tiny_models):
    model = GroundingDinoForObjectDetection.from_pretrained(tiny_models.detector).eval()
    return model, AutoProcessor.from_pretrained(tiny_models.detector)


def _losses(model, processor, images, prompts, labels) -> dict[str, float]:
    inputs = processor(images=images, text=prompts, padding="longest", return_tensors="pt")
    out = model(**inputs, labels=labels)
    return {"loss": out.loss.item(), **{k: v.item() for k, v in out.loss_dict.items()}}


def test_the_batched_loss_is_the_per_image_losses_where_upstream_is_wrong(model_and_processor, tiny_models):
    """Three images whose prompts have 1, 2 and 2 phrases (equal token counts, so batching pads nothing): each
    image's labels need the offsets 0, 1, 3; upstream uses 0, 2, 2. Every loss term is a sum over boxes divided by
    the batch's box count, so the batch's terms times its boxes equal the sum of each image's alone times its."""
    model, processor = model_and_processor
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (120, 160, 3), np.uint8)) for _ in range(3)]
    prompts = ["big red cup.", "cup. box.", "ball. can."]
    labels = [{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3]])},
              {"class_labels": torch.tensor([1, 0]), "boxes": torch.tensor([[0.6, 0.5, 0.2, 0.2],
                                                                            [0.2, 0.2, 0.1, 0.2]])},
              {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.7, 0.3, 0.2]])}]
    counts = [len(t["class_labels"]) for t in labels]
    fixed = GroundingDinoForObjectDetection.from_pretrained(tiny_models.detector).eval()
    fixed.loss_function = batched_grounding_dino_loss
    with torch.no_grad():
        upstream = _losses(model, processor, images, prompts, labels)
        batched = _losses(fixed, processor, images, prompts, labels)
        alone = [_losses(fixed, processor, [i], [p], [t]) for i, p, t in zip(images, prompts, labels)]
    terms = [k for k in batched if not k.startswith("cardinality")]    # that one is a per-image mean
    assert {"loss", "loss_ce", "loss_bbox", "loss_giou", "loss_ce_enc"} <= set(terms)
    for term in terms:
        assert batched[term] * sum(counts) == pytest.approx(sum(a[term] * n for a, n in zip(alone, counts)),
                                                            rel=1e-4), term
    assert upstream["loss_ce"] != pytest.approx(batched["loss_ce"], rel=1e-3)
    assert upstream["loss_bbox"] == pytest.approx(batched["loss_bbox"], rel=1e-5)   # the boxes were never wrong


def test_an_instruction_prompt_names_every_object_its_phrases_describe():
    truth = FrameTruth((FrameObject("cup", "red", np.zeros(4)), FrameObject("cup", "blue", np.zeros(4)),
                        FrameObject("bowl", "pink", np.zeros(4))), ())
    query = parse_instruction("grab the red mug to the left of the bowl")
    prompt = instruction_prompt(truth, query, 0)
    assert prompt.phrases == ("red mug", "bowl") and prompt.labels == ((0, 0), (2, 1))
    # the target keeps its phrase where the pixels' colour name disagrees with the instruction's
    assert instruction_prompt(truth, parse_instruction("pick up the green cup"), 1).labels == ((1, 0),)


def test_scene_prompts_use_synonyms_and_colours_and_name_the_right_boxes():
    truth = FrameTruth((FrameObject("cup", "red", np.zeros(4)), FrameObject("cup", "blue", np.zeros(4)),
                        FrameObject("ball", "green", np.zeros(4))), ())
    words, absent = set(), 0
    for seed in range(40):
        prompt = scene_prompt(truth, np.random.default_rng(seed))
        for k, phrase in enumerate(prompt.phrases):
            named = {i for i, j in prompt.labels if j == k}
            words.update(phrase.split())
            if phrase.split()[-1] in ("cup", "mug"):
                colour = phrase.split()[0] if " " in phrase else None
                assert named == ({0, 1} if colour is None else {0} if colour == "red" else {1}), phrase
            elif phrase.split()[-1] in ("ball", "sphere"):
                assert named == {2}
            else:
                absent += 1
                assert not named
    assert {"cup", "mug", "ball", "sphere", "red", "blue", "green"} <= words and absent > 5


def test_examples_fit_the_model_and_label_phrases_of_their_own_prompt(frames, model_and_processor):
    model, processor = model_and_processor
    examples = Examples(Dataset(frames), processor, max_prompt_length(model), 0.5)
    inputs, labels = examples.batch([0, 1, 2, 3], np.random.default_rng(3), 4)
    assert inputs["pixel_values"].shape[0] == 4 and inputs["input_ids"].shape[1] <= max_prompt_length(model)
    for ids, target in zip(inputs["input_ids"], labels):
        phrases = processor.tokenizer.decode(ids, skip_special_tokens=True).count(".")
        assert 0 <= int(target["class_labels"].max()) < phrases
        assert ((target["boxes"] > 0) & (target["boxes"] <= 1)).all()


def test_box_metrics_on_known_boxes():
    truths = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [21, 21, 30, 30], [1, 0, 10, 10]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert box_iou(boxes[2], truths[1])[0, 0] == pytest.approx(81 / 100)
    hits = match(boxes, scores, truths)
    assert hits.tolist() == [True, False, True, False]      # the late duplicate of the first box is a false positive
    # precision 1 up to recall 0.5, then 2/3 at recall 1
    assert average_precision(scores, hits, 2) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(scores, hits, 4) == pytest.approx(0.25 + 0.25 * 2 / 3)   # two boxes never found
    assert average_precision(scores[[1]], hits[[1]], 2) == 0.0
    assert match(boxes[:1], scores[:1], truths, iou=1.01).tolist() == [False]


def test_training_and_scoring_leave_the_prompt_cache_alone(frames, tiny_models, tmp_path):
    summary = finetune_detector(frames, tmp_path / "d", tiny_models.detector, DetectorTraining(steps=2, **FAST))
    assert summary["steps"] == 2 and {"ap50", "recall", "target_top1"} <= set(summary["last"])
    trained = GroundingDetector.load(str(tmp_path / "d"), "cpu", "float32")
    assert isinstance(trained.model.model.text_backbone.forward, PromptCache)
    scores = evaluate_boxes(Dataset(frames), trained, [0, 1, 2])
    assert scores.instances >= 6 and scores.instructions >= 3 and set(scores.per_phrase) <= {
        "cup", "box", "ball", "bottle", "can", "block", "jar", "bowl", "cube", "packet", "tumbler"}
    for value in (scores.ap50, scores.recall, scores.target_top1):
        assert 0 <= value <= 1
    uncached = GroundingDetector(trained.model, trained.processor, "x", prompt_cache=False)
    assert uncached.prompt_cache is None


def test_a_resumed_run_equals_an_uninterrupted_one(frames, tiny_models, tmp_path):
    whole = finetune_detector(frames, tmp_path / "whole", tiny_models.detector,
                              DetectorTraining(steps=4, validate_every=2, **FAST))
    finetune_detector(frames, tmp_path / "split", tiny_models.detector, DetectorTraining(steps=2, validate_every=2,
                                                                                          **FAST))
    resumed = finetune_detector(frames, tmp_path / "split", "", DetectorTraining(steps=4), resume=True)
    assert whole["steps"] == resumed["steps"] == 4
    a = GroundingDinoForObjectDetection.from_pretrained(tmp_path / "whole")
    b = GroundingDinoForObjectDetection.from_pretrained(tmp_path / "split")
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    record = json.loads((tmp_path / "split" / "finetune_detector.json").read_text())
    assert [h["step"] for h in record["history"]] == [2, 4] and record["started_from"] == tiny_models.detector
    uninterrupted = json.loads((tmp_path / "whole" / "finetune_detector.json").read_text())["history"]
    assert [{k: v for k, v in h.items() if k != "minutes"} for h in record["history"]] == \
        [{k: v for k, v in h.items() if k != "minutes"} for h in uninterrupted]


def test_clear_errors(frames, tiny_models, tmp_path):
    with pytest.raises(DatasetError, match="not a dataset"):
        finetune_detector(tmp_path, tmp_path / "out", tiny_models.detector)
    empty = tmp_path / "empty"
    with DatasetWriter(empty, source="test"):
        pass
    with pytest.raises(DatasetError, match="holds no frames"):
        finetune_detector(empty, tmp_path / "out", tiny_models.detector)
    maskless = tmp_path / "maskless"
    with DatasetWriter(maskless, source="test") as writer:
        for _, frame in Dataset(frames).frames():
            writer.add_frame(type(frame)(**{**frame.__dict__, "labels": np.zeros_like(frame.labels)}))
    with pytest.raises(DatasetError, match="without masks"):
        finetune_detector(maskless, tmp_path / "out", tiny_models.detector, DetectorTraining(steps=1, **FAST))
    with pytest.raises(DatasetError, match="without masks"):
        evaluate_boxes(Dataset(maskless), GroundingDetector.load(tiny_models.detector, "cpu", "float32"))
    with pytest.raises(ModelUnavailableError, match="holds a 'sam' model, not Grounding DINO"):
        finetune_detector(frames, tmp_path / "out", tiny_models.segmenter)
    with pytest.raises(TrainingStateError, match="no finetune_detector.json"):
        finetune_detector(frames, tmp_path / "nothing", tiny_models.detector, resume=True)
    finetune_detector(frames, tmp_path / "done", tiny_models.detector, DetectorTraining(steps=1, **FAST))
    with pytest.raises(TrainingStateError, match="already holds a fine-tuned detector"):
        finetune_detector(frames, tmp_path / "done", tiny_models.detector)


def _trained_from(start: str, trained: Path) -> GroundingDinoForObjectDetection:
    """The model a run wrote to `trained`, checked to differ from the one it started from."""
    before = GroundingDinoForObjectDetection.from_pretrained(start)
    after = GroundingDinoForObjectDetection.from_pretrained(trained)
    assert any(not torch.equal(p, q) for p, q in zip(before.parameters(), after.parameters()))
    return after


def test_two_processes_train_with_distributed_data_parallel_on_cpu(frames, tiny_models, tmp_path):
    """torchrun --nproc_per_node 2 (gloo): both processes take the same 2 steps and rank 0 writes the run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
                          str(Path(sys.executable).with_name("dino-vla")), "finetune-detector", "--data", str(frames),
                          "--out", str(tmp_path / "ddp"), "--model", tiny_models.detector, "--steps", "2",
                          "--batch-size", "1", "--validation-frames", "1", "--threads", "1"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summaries = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["processes"] == 2 and summaries[0]["steps"] == 2
    _trained_from(tiny_models.detector, tmp_path / "ddp")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run it where one is lent)")
def test_one_step_on_cuda_under_bfloat16_autocast(frames, tiny_models, tmp_path, monkeypatch):
    """The GPU site's path: the batch moved to the GPU, the training forward under bfloat16 autocast (its linear
    layers give bfloat16; the validation after the step runs in float32), the weights written in float32."""
    linear, outputs = torch.nn.functional.linear, []

    def watched(*args, **kwargs):
        out = linear(*args, **kwargs)
        outputs.append((out.device.type, out.dtype))
        return out

    monkeypatch.setattr(torch.nn.functional, "linear", watched)
    losses = []
    summary = finetune_detector(frames, tmp_path / "cuda", tiny_models.detector,
                                DetectorTraining(steps=1, **FAST), device="cuda",
                                progress=lambda step, loss: losses.append(loss))
    monkeypatch.undo()
    assert summary["steps"] == 1 and len(losses) == 1 and np.isfinite(losses[0])
    assert {device for device, _ in outputs} == {"cuda"} and ("cuda", torch.bfloat16) in outputs
    after = _trained_from(tiny_models.detector, tmp_path / "cuda")
    assert {p.dtype for p in after.parameters()} == {torch.float32}
    assert all(torch.isfinite(p).all() for p in after.parameters())
