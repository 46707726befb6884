"""Masks for detected boxes (transformers SamModel, box prompts): on the whole frame (one image encoding shared
by every box), or each box in a square crop around it (`crop_context` times the box's longer side), which
gives small objects many more of SAM's low-resolution mask pixels."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import SamModel, SamProcessor

from dino_vla.config import DEFAULT_MODELS
from dino_vla.models.loading import load_model_and_processor, to_model
from dino_vla.types import Masks

DEFAULT_MODEL = DEFAULT_MODELS["segmenter"]


MIN_CROP_PX = 16
# an object's own view: a window this many times its box (the backbone's object views, the policy's crop
# features)
OBJECT_CONTEXT = 2.0


def crop_window(box: np.ndarray, image_hw: tuple[int, int], context: float) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 (pixels, x1/y1 exclusive) of the square window `context` times the xyxy box's longer side
    (at least MIN_CROP_PX) centred on it, moved inside the image where it fits, clipped where it does not."""
    h, w = image_hw
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(MIN_CROP_PX, context * max(x1 - x0, y1 - y0))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(0.0, cx - side / 2), max(0.0, w - side))
    top = min(max(0.0, cy - side / 2), max(0.0, h - side))
    return (int(np.floor(left)), int(np.floor(top)), int(min(w, np.ceil(left + side))),
            int(min(h, np.ceil(top + side))))


class Segmenter:
    def __init__(self, model: SamModel, processor: SamProcessor, name: str, crop_context: float = 0.0):
        self.model = model
        self.processor = processor
        self.name = name
        self.crop_context = crop_context   # 0: the whole frame; else each box in its crop_window

    @classmethod
    def load(cls, source: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto",
             crop_context: float = 0.0, compile: bool = False) -> "Segmenter":
        model, processor = load_model_and_processor(SamModel, SamProcessor, source, device, dtype,
                                                    what="SAM segmenter", parameter="segmenter.model", compile=compile)
        return cls(model, processor, source, crop_context)

    @torch.inference_mode()
    def segment(self, image: np.ndarray, boxes: np.ndarray) -> Masks:
        """One mask per xyxy box (pixels), at the image's size."""
        h, w = image.shape[:2]
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            return Masks(np.zeros((0, h, w), bool), np.zeros(0, np.float32))
        if self.crop_context <= 0:
            return self._segment(image, boxes)
        masks, scores = np.zeros((len(boxes), h, w), bool), np.zeros(len(boxes), np.float32)
        for i, box in enumerate(boxes):
            x0, y0, x1, y1 = crop_window(box, (h, w), self.crop_context)
            crop = self._segment(np.ascontiguousarray(image[y0:y1, x0:x1]), box[None] - [x0, y0, x0, y0])
            masks[i, y0:y1, x0:x1], scores[i] = crop.masks[0], crop.scores[0]
        return Masks(masks, scores)

    def _segment(self, image: np.ndarray, boxes: np.ndarray) -> Masks:
        """All boxes on one image encoding."""
        inputs = self.processor(images=Image.fromarray(image), input_boxes=[boxes.tolist()],
                                return_tensors="pt")
        out = self.model(pixel_values=to_model(inputs["pixel_values"], self.model),
                         input_boxes=to_model(inputs["input_boxes"], self.model), multimask_output=False)
        masks = self.processor.post_process_masks(out.pred_masks.float().cpu(), inputs["original_sizes"],
                                                  inputs["reshaped_input_sizes"])[0]
        return Masks(masks[:, 0].numpy().astype(bool), out.iou_scores[0, :, 0].float().cpu().numpy())
