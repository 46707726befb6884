"""DINOv2 vision tokens (transformers Dinov2Model)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, Dinov2Model

from dino_vla.config import DEFAULT_MODELS
from dino_vla.models.loading import load_model_and_processor, to_model
from dino_vla.types import Features

DEFAULT_MODEL = DEFAULT_MODELS["features"]


class DinoFeatures:
    """Image -> CLS embedding + patch-token grid."""

    def __init__(self, model: Dinov2Model, processor, name: str):
        self.model = model
        self.processor = processor
        self.name = name
        self.patch_size = int(model.config.patch_size)

    @classmethod
    def load(cls, source: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto",
             compile: bool = False) -> "DinoFeatures":
        model, processor = load_model_and_processor(Dinov2Model, AutoImageProcessor, source, device, dtype,
                                                    what="DINOv2 features", parameter="features.model",
                                                    compile=compile)
        return cls(model, processor, source)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(1, 3, H, W) model input of an RGB uint8 image (resize, centre crop, normalise)."""
        return self.processor(images=Image.fromarray(image), return_tensors="pt")["pixel_values"]

    @torch.inference_mode()
    def extract(self, image: np.ndarray) -> Features:
        pixels = to_model(self.preprocess(image), self.model)
        hidden = self.model(pixel_values=pixels).last_hidden_state[0].float()
        rows, cols = pixels.shape[2] // self.patch_size, pixels.shape[3] // self.patch_size
        # token 0 is CLS; any register tokens sit between it and the rows*cols patch tokens
        patches = hidden[-rows * cols:].reshape(rows, cols, -1)
        return Features(cls=hidden[0].cpu().numpy(), patch_tokens=patches.cpu().numpy(),
                        patch_size=self.patch_size, input_size=(int(pixels.shape[2]), int(pixels.shape[3])),
                        model=self.name)
