"""Masks for detected boxes (transformers SamModel, box prompts)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import SamModel, SamProcessor

from dino_vla.config import DEFAULT_MODELS
from dino_vla.models.loading import load_model_and_processor
from dino_vla.types import Masks

DEFAULT_MODEL = DEFAULT_MODELS["segmenter"]


class Segmenter:
    def __init__(self, model: SamModel, processor: SamProcessor, name: str):
        self.model = model
        self.processor = processor
        self.name = name

    @classmethod
    def load(cls, source: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto") -> "Segmenter":
        model, processor = load_model_and_processor(SamModel, SamProcessor, source, device, dtype,
                                                    what="SAM segmenter", parameter="segmenter.model")
        return cls(model, processor, source)

    @torch.inference_mode()
    def segment(self, image: np.ndarray, boxes: np.ndarray) -> Masks:
        """One mask per xyxy box (pixels), at the image's size. All boxes share one image encoding."""
        h, w = image.shape[:2]
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            return Masks(np.zeros((0, h, w), bool), np.zeros(0, np.float32))
        inputs = self.processor(images=Image.fromarray(image), input_boxes=[boxes.tolist()],
                                return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.model.device, self.model.dtype)
        out = self.model(pixel_values=pixels, input_boxes=inputs["input_boxes"].to(self.model.device,
                                                                                    self.model.dtype),
                         multimask_output=False)
        masks = self.processor.post_process_masks(out.pred_masks.float().cpu(), inputs["original_sizes"],
                                                  inputs["reshaped_input_sizes"])[0]
        return Masks(masks[:, 0].numpy().astype(bool), out.iou_scores[0, :, 0].float().cpu().numpy())
