"""Fine-tuning SAM on a robot's own frames (`dino-vla finetune-segmenter`) and measuring its masks
(`dino-vla eval-perception`).

Training examples are the instance masks of a dataset in the project's format (what `record-sim` and the
recorder node write): each a box prompt (the mask's tight box, every side jittered by up to `box_jitter` of the
box's size) in a square crop around it (`crop_context` times the box's longer side, itself jittered), as the
segmenter node crops with the same `crop_context`. The loss is on SAM's low-resolution mask logits: binary
cross-entropy + dice, plus the IoU head regressed to the IoU its mask reaches. Frames are split once (seeded)
into training and validation frames, so validation objects are never trained on."""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import SamModel, SamProcessor

from dino_vla.dataset.format import Dataset, DatasetError
from dino_vla.models.loading import load_model_and_processor
from dino_vla.adaptation.settings import SegmenterTraining
from dino_vla.models.segmenter import Segmenter, crop_window
from dino_vla.types import tight_box
from dino_vla.training_state import (TrainingStateError, load_training_state, save_training_state,
                                     write_training_record)

TRAINING_FILE = "finetune_segmenter.json"
MIN_MASK_PX = 50     # smaller instances (mostly hidden behind others) are neither trained on nor scored


@dataclass(frozen=True)
class Instance:
    frame: int
    label: int            # the instance's value in the frame's label image
    name: str


def instances_of(frame) -> list[tuple[int, str, np.ndarray]]:
    """(label, name, mask) of a recorded frame's instances of at least MIN_MASK_PX pixels."""
    out = []
    for k, name in enumerate(frame.objects, start=1):
        mask = frame.labels == k
        if mask.sum() >= MIN_MASK_PX:
            out.append((k, name, mask))
    return out


def instances(dataset: Dataset, frames: list[int]) -> list[Instance]:
    return [Instance(index, k, name) for index in frames for k, name, _ in instances_of(dataset.frame(index))]


def split_frames(num_frames: int, validation_fraction: float, seed: int, max_frames: int = 0
                 ) -> tuple[list[int], list[int]]:
    """(training, validation) frame indices: a seeded permutation, the first validation_fraction held out."""
    order = np.random.default_rng(seed).permutation(num_frames)
    if max_frames:
        order = order[:max_frames]
    held = max(1, int(round(validation_fraction * len(order)))) if len(order) > 1 else 0
    return sorted(order[held:].tolist()), sorted(order[:held].tolist())


class Examples:
    """Box prompts and target masks, in the layout SamModel's low-resolution masks have."""

    def __init__(self, dataset: Dataset, processor: SamProcessor, settings: SegmenterTraining,
                 cache_frames: int = 1024):
        self.dataset, self.processor, self.settings = dataset, processor, settings
        self._frames: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cache_frames = cache_frames

    def _frame(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in self._frames:
            if len(self._frames) >= self._cache_frames:
                self._frames.pop(next(iter(self._frames)))
            frame = self.dataset.frame(index)
            self._frames[index] = (frame.rgb, frame.labels.astype(np.uint16))
        return self._frames[index]

    def batch(self, chosen: list[Instance], rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
        """rng None: no jitter (validation)."""
        crops, boxes, targets = [], [], []
        for inst in chosen:
            rgb, labels = self._frame(inst.frame)
            mask = labels == inst.label
            box = tight_box(mask)
            if rng is not None:
                size = np.array([box[2] - box[0], box[3] - box[1]] * 2, np.float32)
                box = box + rng.uniform(-1, 1, 4).astype(np.float32) * self.settings.box_jitter * size
            h, w = mask.shape
            box = np.clip(box, 0, [w, h, w, h]).astype(np.float32)
            if self.settings.crop_context > 0:
                context = self.settings.crop_context * (rng.uniform(0.8, 1.2) if rng is not None else 1.0)
                x0, y0, x1, y1 = crop_window(box, (h, w), context)
            else:
                x0, y0, x1, y1 = 0, 0, w, h
            crops.append(Image.fromarray(np.ascontiguousarray(rgb[y0:y1, x0:x1])))
            boxes.append([(box - [x0, y0, x0, y0]).tolist()])
            targets.append(mask[y0:y1, x0:x1])
        inputs = self.processor(images=crops, input_boxes=boxes, return_tensors="pt")
        side = inputs["pixel_values"].shape[-1]
        low = side // 4    # SamModel's masks are a quarter of its padded input
        out = []
        for target, (rh, rw) in zip(targets, inputs["reshaped_input_sizes"].tolist()):
            t = torch.from_numpy(target.astype(np.float32))[None, None]
            t = F.interpolate(t, size=(rh, rw), mode="bilinear", align_corners=False)
            t = F.pad(t, (0, side - rw, 0, side - rh))
            out.append(F.interpolate(t, size=(low, low), mode="area")[0, 0])
        return {"pixel_values": inputs["pixel_values"], "input_boxes": inputs["input_boxes"],
                "targets": torch.stack(out)}


def mask_losses(model: SamModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    out = model(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False)
    logits = out.pred_masks[:, 0, 0].float()          # (B, low, low)
    target = batch["targets"]
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = 1 - (2 * (prob * target).sum((1, 2)) + 1) / (prob.sum((1, 2)) + target.sum((1, 2)) + 1)
    with torch.no_grad():
        hard, truth = logits > 0, target > 0.5
        iou = (hard & truth).sum((1, 2)).float() / (hard | truth).sum((1, 2)).clamp(min=1).float()
    iou_loss = F.mse_loss(out.iou_scores[:, 0, 0].float(), iou)
    loss = bce + dice.mean() + iou_loss
    return loss, {"loss": loss.item(), "bce": bce.item(), "dice": dice.mean().item(), "low_res_iou": iou.mean().item()}


def _trainable(model: SamModel, train: str) -> list[torch.nn.Parameter]:
    if train not in ("all", "decoder"):
        raise ValueError(f"train must be all or decoder, got {train!r}")
    for name, p in model.named_parameters():
        p.requires_grad_(train == "all" or not name.startswith("vision_encoder."))
    return [p for p in model.parameters() if p.requires_grad]


def finetune_segmenter(data: str | Path, out: str | Path, model_source: str,
                       settings: SegmenterTraining = SegmenterTraining(), resume: bool = False, device: str = "cpu",
                       threads: int = 0, progress: Callable[[int, dict], None] | None = None) -> dict:
    """Train SAM (from `model_source`, or from `out` with resume) on `data`'s instance masks; writes `out` as a
    transformers SamModel directory (safetensors + processor) the segmenter node loads, with TRAINING_FILE
    (settings, validation history) and the training state. Returns the summary."""
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    dataset = Dataset(data)
    if dataset.num_frames == 0:
        raise DatasetError(f"{data} holds no frames")
    if resume and not (out / TRAINING_FILE).is_file():
        raise TrainingStateError(f"{out} has no {TRAINING_FILE} to resume from")
    if not resume and (out / TRAINING_FILE).is_file():
        raise TrainingStateError(f"{out} already holds a fine-tuned segmenter; --resume continues it, or choose "
                                 f"another --out")
    if resume:
        record = json.loads((out / TRAINING_FILE).read_text())
        settings = SegmenterTraining(**{**record["settings"], **{k: v for k, v in asdict(settings).items()
                                                                    if k in ("steps", "minutes")}})
        model_source = str(out)
    model, processor = load_model_and_processor(SamModel, SamProcessor, model_source, device, "float32",
                                                what="SAM segmenter", parameter="--model")
    train_frames, val_frames = split_frames(dataset.num_frames, settings.validation_fraction, settings.seed,
                                            settings.max_frames)
    train_set, val_set = instances(dataset, train_frames), instances(dataset, val_frames)
    if not train_set:
        raise DatasetError(f"{data}: no instance masks of {MIN_MASK_PX} pixels or more to train on (a dataset "
                           f"recorded without masks?)")
    examples = Examples(dataset, processor, settings)
    torch.manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(_trainable(model, settings.train), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    step, history = 0, []
    if resume:
        step = load_training_state(out, optimizer)
        history = record["history"]
    started, model_time = time.monotonic(), 0.0
    model.train()
    while step < settings.steps and not (settings.minutes and time.monotonic() - started > 60 * settings.minutes):
        # the batch depends only on (seed, step): a resumed run draws the same examples
        rng = np.random.default_rng([settings.seed, step])
        chosen = [train_set[i] for i in rng.integers(0, len(train_set), settings.batch_size)]
        batch = examples.batch(chosen, rng)
        tick = time.monotonic()
        loss, parts = mask_losses(model, batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        model_time += time.monotonic() - tick
        step += 1
        if progress:
            progress(step, parts)
        if step % settings.validate_every == 0 or step == settings.steps:
            history.append({"step": step, "minutes": round((time.monotonic() - started) / 60, 2),
                            **validation_losses(model, examples, val_set[:256]), "train_loss": round(parts["loss"], 4)})
            _save(out, model, processor, optimizer, step, settings, history, model_source)
            model.train()
    if not history or history[-1]["step"] != step:
        history.append({"step": step, "minutes": round((time.monotonic() - started) / 60, 2),
                        **validation_losses(model, examples, val_set[:256])})
    _save(out, model, processor, optimizer, step, settings, history, model_source)
    return {"out": str(out), "steps": step, "train_instances": len(train_set), "validation_instances": len(val_set),
            "minutes": round((time.monotonic() - started) / 60, 2), "model_minutes": round(model_time / 60, 2),
            "validation": history[-1]}


@torch.no_grad()
def validation_losses(model: SamModel, examples: Examples, val_set: list[Instance], batch_size: int = 16) -> dict:
    """Mean low-resolution IoU and loss on the validation instances (no jitter)."""
    if not val_set:
        return {}
    model.eval()
    ious, losses = [], []
    for i in range(0, len(val_set), batch_size):
        chosen = val_set[i:i + batch_size]
        loss, parts = mask_losses(model, examples.batch(chosen, None))
        ious += [parts["low_res_iou"]] * len(chosen)
        losses += [parts["loss"]] * len(chosen)
    return {"val_loss": round(float(np.mean(losses)), 4), "val_low_res_iou": round(float(np.mean(ious)), 4)}


def _save(out: Path, model: SamModel, processor: SamProcessor, optimizer, step: int, settings: SegmenterTraining,
          history: list[dict], model_source: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    save_training_state(out, optimizer, step)
    write_training_record(out, TRAINING_FILE, asdict(settings), step, history, model_source)


@dataclass(frozen=True)
class MaskScores:
    instances: int
    mean_iou: float
    at_least_0_8: float          # fraction of masks with IoU >= 0.8
    per_name: dict[str, float]   # mean IoU per object name (instance suffixes _2, _3 dropped)


def evaluate_masks(data: str | Path, segmenter: Segmenter, frames: list[int] | None = None,
                   progress: Callable[[int], None] | None = None) -> MaskScores:
    """Every instance of `frames` (default all) segmented from its tight box as prompt (what a perfect detector
    would give), scored by IoU with its recorded mask at full resolution."""
    dataset = Dataset(data)
    ious: list[float] = []
    names: dict[str, list[float]] = {}
    for inst_frame in (frames if frames is not None else range(dataset.num_frames)):
        frame = dataset.frame(inst_frame)
        chosen = instances_of(frame)
        if not chosen:
            continue
        masks = segmenter.segment(frame.rgb, np.stack([tight_box(m) for _, _, m in chosen]))
        for (_, name, truth), predicted in zip(chosen, masks.masks):
            iou = float((predicted & truth).sum() / max(1, (predicted | truth).sum()))
            ious.append(iou)
            names.setdefault(re.sub(r"_\d+$", "", name), []).append(iou)   # cup_2 is a cup
        if progress:
            progress(len(ious))
    if not ious:
        raise DatasetError(f"{data}: no instance masks of {MIN_MASK_PX} pixels or more to score")
    return MaskScores(len(ious), float(np.mean(ious)), float(np.mean(np.array(ious) >= 0.8)),
                      {n: float(np.mean(v)) for n, v in sorted(names.items())})

