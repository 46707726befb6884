"""Training Grounding DINO on a robot's own frames (`dino-vla finetune-detector`) and scoring its boxes
(`dino-vla eval-perception --detector`).

Ground truth comes from a dataset's instance masks (what `record-sim` and the recorder node write): each instance
of at least MIN_MASK_PX pixels is a box (the mask's tight box), a kind (its name; cup_2 is a cup) and a colour
(colour_name of its pixels, the test the pick itself applies to "the red cup"). Every training image gets a prompt
of its own, drawn from (seed, step): either the phrases of one of the frame's recorded instructions (target, then
the relation's references, as the detector node prompts them), or the frame's kinds, each named by one of its
nouns (the catalogue's synonyms: "mug" as well as "cup"), some with their colour, in random order, sometimes with a
kind that is not there. A phrase's boxes are all the instances it describes (noun and colour; size words and
relations are resolved by the pick in 3D, not by the detector), so one prompt can give a phrase no box at all.

The loss is transformers' Grounding DINO loss (Hungarian matching, focal loss on the phrases' tokens, L1 + GIoU)
with one fix: transformers 5's GroundingDinoImageLoss offsets each image's class labels by that image's own
phrase count rather than by the phrases of all images before it, so a batch of more than two images, or of two
prompts with different phrase counts, is trained on other phrases' token maps (or fails with an IndexError)."""
from __future__ import annotations

import time
import types
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoProcessor, GroundingDinoForObjectDetection
from transformers.loss import loss_grounding_dino
from transformers.loss.loss_grounding_dino import GroundingDinoForObjectDetectionLoss, GroundingDinoImageLoss

from dino_vla.adaptation.runs import Processes, category_of, instances_of, open_run, save_run, split_frames
from dino_vla.adaptation.settings import DetectorTraining
from dino_vla.colour import colour_name
from dino_vla.dataset.format import ABSENT, Dataset, DatasetError, RecordedFrame
from dino_vla.geometry.boxes import box_iou
from dino_vla.instruction import GroundingQuery, InstructionError, parse_instruction, prompt_from_phrases
from dino_vla.language import ObjectPhrase
from dino_vla.models.detector import GroundingDetector, max_prompt_length, prompt_length
from dino_vla.models.loading import ModelUnavailableError, load_model_and_processor, load_pretrained
from dino_vla.sim.scene import CATALOGUE, CATALOGUE_BY_NAME
from dino_vla.training_state import load_training_state
from dino_vla.types import tight_box

TRAINING_FILE = "finetune_detector.json"
MODEL_TYPE = "grounding-dino"
IOU = 0.5


class _BatchedImageLoss(GroundingDinoImageLoss):
    def _get_target_classes_one_hot(self, outputs, targets, indices):
        """Each image's labels offset by the phrases of all images before it (upstream: by its own count)."""
        label_maps = outputs["label_maps"]
        offsets = np.cumsum([0] + [len(m) for m in label_maps[:-1]])
        class_labels = torch.cat([t["class_labels"][j] + int(offset)
                                  for t, (_, j), offset in zip(targets, indices, offsets)])
        onehot = torch.zeros_like(outputs["logits"], dtype=torch.long)
        onehot[self._get_source_permutation_idx(indices)] = torch.cat(label_maps)[class_labels].to(torch.long)
        return onehot


# transformers' loss function itself, with the fixed criterion in place of GroundingDinoImageLoss (a model uses it
# once `model.loss_function` is set to it): the matching, weights and auxiliary losses stay upstream's
batched_grounding_dino_loss = types.FunctionType(
    GroundingDinoForObjectDetectionLoss.__code__,
    {**vars(loss_grounding_dino), "GroundingDinoImageLoss": _BatchedImageLoss},
    "batched_grounding_dino_loss", GroundingDinoForObjectDetectionLoss.__defaults__)


@dataclass(frozen=True)
class FrameObject:
    kind: str
    colour: str
    box: np.ndarray              # xyxy pixels, the mask's tight box


@dataclass(frozen=True)
class FrameTruth:
    objects: tuple[FrameObject, ...]
    # each recorded instruction that parses: its query and the index into `objects` of its target (None: absent,
    # or hidden behind another object)
    instructions: tuple[tuple[GroundingQuery, int | None], ...]


def frame_truth(frame: RecordedFrame, episodes) -> FrameTruth:
    chosen = instances_of(frame)
    objects = tuple(FrameObject(category_of(name), colour_name(frame.rgb, mask), tight_box(mask))
                    for _, name, mask in chosen)
    position = {label - 1: i for i, (label, _, _) in enumerate(chosen)}
    instructions = []
    for episode in episodes:
        try:
            query = parse_instruction(episode.instruction)
        except InstructionError:     # a recorded instruction the parser refuses names no phrase to detect
            continue
        target = None if episode.target_object in (None, ABSENT) else position.get(episode.target_object)
        instructions.append((query, target))
    return FrameTruth(objects, tuple(instructions))


def nouns_of(kind: str) -> tuple[str, ...]:
    """The nouns an object of this kind answers to (the catalogue's synonyms; a kind it lacks, by its name)."""
    known = CATALOGUE_BY_NAME.get(kind)
    return known.synonyms if known else (kind,)


def describes(phrase: ObjectPhrase, obj: FrameObject) -> bool:
    return phrase.noun in nouns_of(obj.kind) and phrase.colour in (None, obj.colour)


@dataclass(frozen=True)
class Prompt:
    phrases: tuple[str, ...]
    labels: tuple[tuple[int, int], ...]     # (object index, phrase index): the boxes each phrase names


def instruction_prompt(truth: FrameTruth, query: GroundingQuery, target: int | None) -> Prompt:
    """The phrases the detector node prompts with for this instruction; the target is labelled with its phrase
    even where the pixels' colour name disagrees with the instruction's."""
    parsed = [query.parsed.target, *(query.parsed.relation.references if query.parsed.relation else ())]
    labels = {(i, query.phrases.index(p.phrase)) for p in parsed for i, o in enumerate(truth.objects)
              if describes(p, o)}
    if target is not None:
        labels.add((target, 0))
    return Prompt(query.phrases, tuple(sorted(labels)))


def scene_prompt(truth: FrameTruth, rng: np.random.Generator) -> Prompt:
    """The frame's kinds, each by a random noun of its own, half of them with one of its instances' colours
    (naming only those), in random order; half the time with one more kind that is not in the frame."""
    named: list[tuple[str, list[int]]] = []
    for kind in dict.fromkeys(o.kind for o in truth.objects):
        nouns = nouns_of(kind)
        noun = nouns[int(rng.integers(len(nouns)))]
        members = [i for i, o in enumerate(truth.objects) if o.kind == kind]
        if rng.random() < 0.5:
            colours = sorted({truth.objects[i].colour for i in members})
            colour = colours[int(rng.integers(len(colours)))]
            noun, members = f"{colour} {noun}", [i for i in members if truth.objects[i].colour == colour]
        named.append((noun, members))
    missing = [c for c in CATALOGUE if c.name not in {o.kind for o in truth.objects}]
    if missing and rng.random() < 0.5:
        absent = missing[int(rng.integers(len(missing)))].synonyms
        named.append((absent[int(rng.integers(len(absent)))], []))
    named = [named[i] for i in rng.permutation(len(named))]
    return Prompt(tuple(p for p, _ in named), tuple((i, k) for k, (_, members) in enumerate(named) for i in members))


def fit_prompt(prompt: Prompt, fits: Callable[[tuple[str, ...]], bool]) -> Prompt:
    """The leading phrases that fit the model's text length, with their labels."""
    keep = len(prompt.phrases)
    while keep > 1 and not fits(prompt.phrases[:keep]):
        keep -= 1
    return Prompt(prompt.phrases[:keep], tuple((i, k) for i, k in prompt.labels if k < keep))


class Examples:
    """Frames with prompts and Grounding DINO's targets (class_labels: phrase indices within the image's prompt;
    boxes: cx, cy, w, h normalised by the image)."""

    def __init__(self, dataset: Dataset, processor, max_tokens: int, instruction_share: float):
        self.dataset, self.processor = dataset, processor
        self.max_tokens, self.instruction_share = max_tokens, instruction_share
        self.episodes: dict[int, list] = defaultdict(list)
        for episode in dataset.episodes:
            self.episodes[episode.frame_index].append(episode)
        self._truths: dict[int, FrameTruth] = {}

    def frame(self, index: int) -> tuple[RecordedFrame, FrameTruth]:
        frame = self.dataset.frame(index)
        if index not in self._truths:     # small: kept for every frame
            self._truths[index] = frame_truth(frame, self.episodes[index])
        return frame, self._truths[index]

    def fits(self, phrases: tuple[str, ...]) -> bool:
        return prompt_length(self.processor, phrases) <= self.max_tokens

    def prompt(self, truth: FrameTruth, rng: np.random.Generator) -> Prompt:
        if truth.instructions and rng.random() < self.instruction_share:
            query, target = truth.instructions[int(rng.integers(len(truth.instructions)))]
            prompt = fit_prompt(instruction_prompt(truth, query, target), self.fits)
            if prompt.labels:     # a prompt naming nothing there teaches no box: name the frame's objects instead
                return prompt
        return fit_prompt(scene_prompt(truth, rng), self.fits)

    def batch(self, frames: list[int], rng: np.random.Generator, size: int) -> tuple[dict, list[dict]]:
        """`size` frames drawn from `frames` (frames without objects skipped) with their prompts and targets."""
        images, prompts, labels = [], [], []
        for _ in range(100 * size):
            if len(images) == size:
                break
            frame, truth = self.frame(frames[int(rng.integers(len(frames)))])
            if not truth.objects:
                continue
            prompt = self.prompt(truth, rng)
            h, w = frame.labels.shape
            xyxy = np.stack([truth.objects[i].box for i, _ in prompt.labels]) / np.array([w, h, w, h], np.float32)
            cxcywh = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
            images.append(Image.fromarray(frame.rgb))
            prompts.append(prompt_from_phrases(prompt.phrases))
            labels.append({"class_labels": torch.tensor([k for _, k in prompt.labels]),
                           "boxes": torch.from_numpy(cxcywh.astype(np.float32))})
        if len(images) < size:
            raise DatasetError(f"{self.dataset.root}: too few frames with instance masks of objects to draw from")
        inputs = self.processor(images=images, text=prompts, padding="longest", return_tensors="pt")
        return dict(inputs), labels

    def require_objects(self, frames: list[int]) -> None:
        if not any(self.frame(i)[1].objects for i in frames):
            raise DatasetError(f"{self.dataset.root}: no instance masks to take boxes from in its training frames "
                               f"(a dataset recorded without masks?)")


def check_architecture(source: str) -> None:
    """A clear error for a checkpoint of another model (e.g. a SAM directory given as the detector)."""
    config = load_pretrained(AutoConfig.from_pretrained, source, what="Grounding DINO detector",
                             parameter="--model")
    if config.model_type != MODEL_TYPE:
        raise ModelUnavailableError(f"{source} holds a {config.model_type!r} model, not Grounding DINO "
                                    f"({MODEL_TYPE!r})")


def finetune_detector(data: str | Path, out: str | Path, model_source: str,
                      settings: DetectorTraining = DetectorTraining(), resume: bool = False, device: str = "cpu",
                      threads: int = 0, validation_data: str | Path | None = None,
                      progress: Callable[[int, float], None] | None = None) -> dict:
    """Train Grounding DINO (from `model_source`, or from `out` with resume) on `data`'s boxes and phrases; writes
    `out` as a transformers GroundingDinoForObjectDetection directory (safetensors + processor) the detector
    node loads, with TRAINING_FILE (settings, checkpoint history) and the training state. Under torchrun each
    process trains on its own batches (DistributedDataParallel) and rank 0 validates and writes. Returns the
    summary (on every rank)."""
    if threads:
        torch.set_num_threads(threads)
    processes = Processes.start(device)
    try:
        return _train(Path(out), Dataset(data), model_source, settings, resume, processes,
                      Dataset(validation_data) if validation_data else None, progress)
    finally:
        processes.stop()


def _train(out: Path, dataset: Dataset, model_source: str, settings: DetectorTraining, resume: bool,
           processes: Processes, validation: Dataset | None, progress) -> dict:
    if dataset.num_frames == 0:
        raise DatasetError(f"{dataset.root} holds no frames")
    settings, record = open_run(out, TRAINING_FILE, "detector", settings, resume)
    if record:
        model_source = str(out)
    check_architecture(model_source)
    model, processor = load_model_and_processor(GroundingDinoForObjectDetection, AutoProcessor, model_source,
                                                str(processes.device), "float32", what="Grounding DINO detector",
                                                parameter="--model")
    model.loss_function = batched_grounding_dino_loss
    train_frames, val_frames = split_frames(dataset.num_frames, settings.validation_fraction, settings.seed,
                                            settings.max_frames)
    examples = Examples(dataset, processor, max_prompt_length(model), settings.instruction_share)
    examples.require_objects(train_frames)
    scored = (validation, list(range(min(validation.num_frames, settings.validation_frames)))) if validation \
        else (dataset, val_frames[:settings.validation_frames])
    torch.manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    step, history = 0, []
    if record:
        step = load_training_state(out, optimizer)
        history = record["history"]
    trained = model
    if processes.world > 1:
        # unused parameters: the two-stage encoder heads take no gradient from some batches
        trained = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    on_cuda = processes.device.type == "cuda"
    precision = torch.autocast("cuda", dtype=torch.bfloat16) if settings.amp and on_cuda else nullcontext()
    started, losses, saved = time.monotonic(), [], [step]
    before = history[-1]["minutes"] if history else 0.0     # a resumed run's minutes go on from its last checkpoint

    def checkpoint() -> None:
        saved.append(step)      # on every rank (only rank 0 keeps the history): all meet at the barrier below
        if processes.main:
            entry = {"step": step, "minutes": round(before + (time.monotonic() - started) / 60, 2)}
            if losses:
                entry["train_loss"] = round(float(np.mean(losses)), 4)
            if scored[1]:
                scores = evaluate_boxes(scored[0], GroundingDetector(model, processor, "training", prompt_cache=False),
                                        scored[1])
                entry.update(ap50=round(scores.ap50, 4), recall=round(scores.recall, 4),
                             target_top1=round(scores.target_top1, 4))
                model.train()
            history.append(entry)
            save_run(out, TRAINING_FILE, model, processor, optimizer, step, settings, history, model_source)
        losses.clear()
        processes.barrier()

    model.train()
    while step < settings.steps and not processes.agree(
            bool(settings.minutes) and time.monotonic() - started > 60 * settings.minutes):
        # the batch depends only on (seed, step, rank): a resumed run draws the same examples
        rng = np.random.default_rng([settings.seed, step, processes.rank])
        inputs, labels = examples.batch(train_frames, rng, settings.batch_size)
        inputs = {k: v.to(processes.device) for k, v in inputs.items()}
        labels = [{k: v.to(processes.device) for k, v in target.items()} for target in labels]
        with precision:
            loss = trained(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        losses.append(loss.item())
        if progress:
            progress(step, losses[-1])
        if step % settings.validate_every == 0 or step == settings.steps:
            checkpoint()
    if saved[-1] != step:
        checkpoint()
    return {"out": str(out), "steps": step, "processes": processes.world, "train_frames": len(train_frames),
            "validation_frames": len(scored[1]), "minutes": round((time.monotonic() - started) / 60, 2),
            "last": history[-1] if history else {}}


def match(boxes: np.ndarray, scores: np.ndarray, truths: np.ndarray, iou: float = IOU) -> np.ndarray:
    """Whether each detection (boxes, scores of one image) is a true positive: best score first, each takes the
    unmatched truth it overlaps most, if by `iou` or more (PASCAL VOC)."""
    hits = np.zeros(len(boxes), bool)
    if len(truths) == 0 or len(boxes) == 0:
        return hits
    overlaps = box_iou(boxes, truths)
    free = np.ones(len(truths), bool)
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        candidates = np.where(free, overlaps[i], -1.0)
        j = int(np.argmax(candidates))
        if candidates[j] >= iou:
            hits[i], free[j] = True, False
    return hits


def average_precision(scores: np.ndarray, hits: np.ndarray, truths: int) -> float:
    """Area under the precision-recall curve with precision made monotone (all-point interpolation, PASCAL VOC
    2010+ and COCO's AP50 up to COCO's 101 recall samples)."""
    if truths == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.cumsum(np.asarray(hits)[order])
    precision = tp / np.arange(1, len(tp) + 1)
    recall = tp / truths
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * precision))


@dataclass(frozen=True)
class BoxScores:
    frames: int
    instances: int
    ap50: float                # mean over the phrases (kinds) with instances of their AP at IoU 0.5
    recall: float              # share of instances found (IoU >= 0.5) by a box of their phrase scoring >= threshold
    box_threshold: float
    target_top1: float         # share of instructions whose target phrase's best box is their target (IoU >= 0.5)
    instructions: int
    per_phrase: dict[str, dict[str, float]]   # kind -> instances, recall, ap50


def kind_prompts(kinds: list[str], fits: Callable[[tuple[str, ...]], bool]) -> list[tuple[str, ...]]:
    """The kinds in as few prompts as the model's text length allows."""
    prompts: list[tuple[str, ...]] = []
    for kind in kinds:
        if prompts and fits(prompts[-1] + (kind,)):
            prompts[-1] += (kind,)
        else:
            prompts.append((kind,))
    return prompts


def evaluate_boxes(dataset: Dataset, detector: GroundingDetector, frames: list[int] | None = None,
                   box_threshold: float | None = None, progress: Callable[[int], None] | None = None) -> BoxScores:
    """Boxes on `frames` (default all): every kind in the frames prompted by name (all kinds in every frame, so
    kinds a frame lacks can only add false positives), each query scored per phrase (score_phrases): AP50 and
    recall per kind; and each recorded instruction with a visible target prompted with its own phrases, the
    target phrase's best-scoring box compared with the target's box."""
    frames = list(range(dataset.num_frames)) if frames is None else frames
    threshold = detector.box_threshold if box_threshold is None else box_threshold
    examples = Examples(dataset, detector.processor, max_prompt_length(detector.model), 0.0)
    truths = {i: examples.frame(i)[1] for i in frames}
    kinds = sorted({o.kind for t in truths.values() for o in t.objects})
    if not kinds:
        raise DatasetError(f"{dataset.root}: no instance masks to take boxes from (a dataset recorded without "
                           f"masks?)")
    prompts = kind_prompts(kinds, examples.fits)
    found: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    top1: list[bool] = []
    for done, index in enumerate(frames, start=1):
        frame, truth = examples.frame(index)
        for phrases in prompts:
            boxes, scores = detector.score_phrases(frame.rgb, phrases)
            for k, kind in enumerate(phrases):
                mine = np.array([o.box for o in truth.objects if o.kind == kind]).reshape(-1, 4)
                found[kind].append((scores[:, k], match(boxes, scores[:, k], mine)))
                counts[kind] += len(mine)
        for query, target in truth.instructions:
            if target is None:
                continue
            boxes, scores = detector.score_phrases(frame.rgb, query.phrases)
            best = int(np.argmax(scores[:, 0]))
            top1.append(bool(box_iou(boxes[best], truth.objects[target].box)[0, 0] >= IOU))
        if progress:
            progress(done)
    per_phrase = {}
    for kind in kinds:
        scores = np.concatenate([s for s, _ in found[kind]])
        hits = np.concatenate([h for _, h in found[kind]])
        if counts[kind]:
            per_phrase[kind] = {"instances": counts[kind],
                                "recall": float(np.sum(hits & (scores >= threshold)) / counts[kind]),
                                "ap50": average_precision(scores, hits, counts[kind])}
    instances = sum(counts.values())
    return BoxScores(len(frames), instances, float(np.mean([p["ap50"] for p in per_phrase.values()])),
                     float(sum(p["recall"] * p["instances"] for p in per_phrase.values()) / instances), threshold,
                     float(np.mean(top1)) if top1 else float("nan"), len(top1), per_phrase)

