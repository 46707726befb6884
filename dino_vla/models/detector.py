"""Open-vocabulary boxes for the phrases of an instruction (transformers GroundingDINO)."""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor, GroundingDinoForObjectDetection
from transformers.models.grounding_dino.modeling_grounding_dino import build_label_maps

from dino_vla.instruction import InstructionError, normalise_phrases, prompt_from_phrases
from dino_vla.config import DEFAULT_MODELS
from dino_vla.models.loading import load_model_and_processor, to_model
from dino_vla.types import Detections

DEFAULT_MODEL = DEFAULT_MODELS["detector"]


class PromptCache:
    """Grounding DINO runs its text backbone on the prompt for every frame, although the prompt changes only
    with the instruction: the backbone's outputs for the last few prompts are kept and given back. It wraps the
    backbone's forward in place (weights and state dict untouched) and steps aside while gradients are on."""

    def __init__(self, backbone: torch.nn.Module, size: int = 4):
        self._forward, self.size = backbone.forward, size
        self._outputs: OrderedDict[tuple, Any] = OrderedDict()
        self.hits = self.misses = 0
        backbone.forward = self

    def __call__(self, *args, **kwargs):
        if torch.is_grad_enabled():
            return self._forward(*args, **kwargs)
        key = tuple(map(_key, args)) + tuple((name, _key(value)) for name, value in sorted(kwargs.items()))
        if key in self._outputs:
            self.hits += 1
            self._outputs.move_to_end(key)
            return self._outputs[key]
        self.misses += 1
        out = self._outputs[key] = self._forward(*args, **kwargs)
        while len(self._outputs) > self.size:
            self._outputs.popitem(last=False)
        return out


def _key(value) -> Any:
    """Tensors by content, device and dtype (a model moved to another device misses, as it must)."""
    if isinstance(value, torch.Tensor):
        return str(value.device), str(value.dtype), tuple(value.shape), value.detach().cpu().numpy().tobytes()
    return value


class GroundingDetector:
    def __init__(self, model, processor, name: str, box_threshold: float = 0.35,
                 text_threshold: float = 0.25, nms_iou: float = 0.5, max_detections: int = 20,
                 prompt_cache: bool = True):
        """prompt_cache False: for a model whose weights change between calls (validation while training),
        where a cached prompt encoding would be stale."""
        self.model = model
        # one cache per model, also when several detectors share it (with other thresholds)
        backbone = getattr(getattr(model, "model", None), "text_backbone", None)
        self.prompt_cache = None if backbone is None or not prompt_cache else \
            backbone.forward if isinstance(backbone.forward, PromptCache) else PromptCache(backbone)
        self.processor = processor
        self.name = name
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.nms_iou = nms_iou
        self.max_detections = max_detections

    @classmethod
    def load(cls, source: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto", compile: bool = False,
             **thresholds) -> "GroundingDetector":
        model, processor = load_model_and_processor(GroundingDinoForObjectDetection, AutoProcessor, source, device,
                                                    dtype, what="Grounding DINO detector", parameter="detector.model",
                                                    compile=compile)
        return cls(model, processor, source, **thresholds)

    def check_phrases(self, phrases: Sequence[str]) -> tuple[str, ...]:
        """The normalised phrases, or InstructionError when their prompt has more text tokens than the
        model reads (config.max_text_len): past it the model fails deep inside its text encoder."""
        phrases = normalise_phrases(phrases)
        tokens = prompt_length(self.processor, phrases)
        if tokens > max_prompt_length(self.model):
            raise InstructionError(
                f"{len(phrases)} phrases make a {tokens}-token prompt; {self.name} reads at most "
                f"{max_prompt_length(self.model)} tokens: ask for fewer or shorter objects")
        return phrases

    def _forward(self, image: np.ndarray, phrases: tuple[str, ...]):
        inputs = {name: to_model(value, self.model) for name, value in self.processor(
            images=Image.fromarray(image), text=prompt_from_phrases(phrases), return_tensors="pt").items()}
        return inputs, self.model(**inputs)

    @torch.inference_mode()
    def score_phrases(self, image: np.ndarray, phrases: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every query's box (xyxy pixels, (Q, 4)) and its score for each phrase ((Q, P)): the mean probability
        of the phrase's tokens, as Grounding DINO's matcher weighs them. No thresholds: what ranking metrics
        (top-1, average precision) need."""
        h, w = image.shape[:2]
        phrases = self.check_phrases(phrases)
        inputs, outputs = self._forward(image, phrases)
        probs = outputs.logits[0].float().sigmoid()
        label_map = build_label_maps(outputs.logits, inputs["input_ids"])[0].float()
        if len(label_map) != len(phrases):
            raise InstructionError(f"the prompt {prompt_from_phrases(phrases)!r} splits into {len(label_map)} "
                                   f"phrases, not {len(phrases)}")
        scores = probs @ (label_map / label_map.sum(1, keepdim=True)).T
        cx, cy, bw, bh = outputs.pred_boxes[0].float().unbind(-1)
        boxes = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
        return boxes.cpu().numpy(), scores.cpu().numpy()

    @torch.inference_mode()
    def detect(self, image: np.ndarray, phrases: Sequence[str]) -> Detections:
        """Boxes (xyxy pixels) whose score passes box_threshold, each labelled with the requested phrase
        its text tokens match; class-wise non-maximum suppression; best first."""
        h, w = image.shape[:2]
        phrases = self.check_phrases(phrases)
        inputs, outputs = self._forward(image, phrases)
        outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
        result = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold,
            target_sizes=[(h, w)])[0]
        boxes = result["boxes"].cpu().numpy().astype(np.float32)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        scores = result["scores"].cpu().numpy().astype(np.float32)
        labels = [_match_phrase(label, phrases) for label in result["text_labels"]]
        keep = [i for i, label in enumerate(labels) if label is not None]
        keep = self._suppress(boxes, scores, labels, keep)
        return Detections(boxes[keep].reshape(-1, 4), scores[keep], tuple(labels[i] for i in keep), (h, w))

    def _suppress(self, boxes, scores, labels, candidates: list[int]) -> list[int]:
        kept: list[int] = []
        for phrase in dict.fromkeys(labels[i] for i in candidates):
            idx = [i for i in candidates if labels[i] == phrase]
            xywh = [[float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])] for b in boxes[idx]]
            survivors = cv2.dnn.NMSBoxes(xywh, scores[idx].tolist(), 0.0, self.nms_iou)
            kept += [idx[int(j)] for j in np.asarray(survivors).reshape(-1)]
        kept.sort(key=lambda i: (-scores[i], i))
        return kept[: self.max_detections]


def prompt_length(processor, phrases: Sequence[str]) -> int:
    """Text tokens of the phrases' prompt, [CLS] and [SEP] included."""
    return len(processor.tokenizer(prompt_from_phrases(phrases))["input_ids"])


def max_prompt_length(model) -> int:
    return int(getattr(model.config, "max_text_len", None) or 10 ** 9)


_SPECIAL_TOKEN = re.compile(r"\[[A-Z]+\]")  # [SEP], [CLS], [PAD] left in decoded labels
_WORD = re.compile(r"[a-z0-9'-]+")


def _match_phrase(label: str, phrases: tuple[str, ...]) -> str | None:
    """Grounding DINO labels a box with the prompt tokens above text_threshold, which can be part of a
    phrase or span two; pick the requested phrase sharing most words (earliest on ties)."""
    words = set(_WORD.findall(_SPECIAL_TOKEN.sub(" ", label).lower()))
    if not words:
        return None
    overlap = [len(words & set(p.split())) for p in phrases]
    best = int(np.argmax(overlap))
    return phrases[best] if overlap[best] > 0 else None
