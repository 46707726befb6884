"""The mask-free grasp policy network: DINOv2 patch tokens (the full grid, each with its camera channels: colour
and the 3D point of its depth) and language tokens (the parsed request's text + the request one-hots) fused by
a transformer; it answers with a heatmap over the patches plus a "none" logit (the named object is not there:
refuse) and, per patch, the grasp relative to it (sub-patch offset, 3D residual from the depth point there,
cos/sin 2yaw, opening), in units normalised by statistics stored with the weights.

Attention runs on a coarser grid (the patch embeddings average-pooled `pool` x `pool`; pool 2: 64 tokens for
DINOv2's 16 x 16 at 224 px), which keeps a CPU epoch affordable: first `vision_layers` of self-attention on the
image alone, once per camera frame (no words: in training a frame's several instructions share that pass),
then `fusion_layers` of joint self-attention over the "none" token, the language tokens and the coarse cells,
per instruction. Each full-resolution patch then reads its own embedding, its cell's fused token and the
fused "none" token (the instruction's summary) for its heatmap logit and offsets."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from dino_vla.policy.patches import CAMERA_DIM, OFFSET_DIM
from dino_vla.policy.tokens import REQUEST_DIM

MASK_FREE = "mask-free"        # the checkpoint metadata's `policy` kind of this network
MASK_FREE_TOKENS_VERSION = 2   # 1: the full patch grid + camera channels, parsed request text + one-hots; 2: + each
#                                  patch's object shape from depth (patches.CAMERA_DIM)


@dataclass(frozen=True)
class MaskFreeConfig:
    vision_dim: int                    # the feature model's embedding size
    language_dim: int                  # the text encoder's hidden size
    rows: int                          # the feature model's patch grid
    cols: int
    patch_px: int
    crop_fraction: float               # the feature model's centre crop / resize (DINOv2: 224 / 256)
    table_height_m: float = 0.40
    d_model: int = 64
    heads: int = 4
    vision_layers: int = 2
    fusion_layers: int = 2
    pool: int = 2                      # attention runs on the patch grid pooled pool x pool
    feedforward: int = 128
    dropout: float = 0.1
    tokens_version: int = MASK_FREE_TOKENS_VERSION

    def __post_init__(self):
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} must be a multiple of heads {self.heads}")
        for name in ("vision_dim", "language_dim", "rows", "cols", "patch_px", "d_model", "heads", "fusion_layers",
                     "pool", "feedforward"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.vision_layers < 0:
            raise ValueError(f"vision_layers must be >= 0, got {self.vision_layers}")
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "MaskFreeConfig":
        return cls(**json.loads(text))


@dataclass
class MaskFreeBatch:
    """B instructions on F camera frames (pads are True in language_pad)."""

    patches: torch.Tensor        # (F, P, vision_dim) DINOv2 patch tokens
    camera: torch.Tensor         # (F, P, CAMERA_DIM) raw camera channels (patches.camera_channels)
    frame: torch.Tensor          # (B,) which frame each instruction is about
    language: torch.Tensor       # (B, T, language_dim)
    language_pad: torch.Tensor   # (B, T) bool
    request: torch.Tensor        # (B, REQUEST_DIM)

    def to(self, device) -> "MaskFreeBatch":
        return MaskFreeBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def _encoder(config: MaskFreeConfig, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(config.d_model, config.heads, config.feedforward, config.dropout,
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class MaskFreePolicyNet(nn.Module):
    def __init__(self, config: MaskFreeConfig):
        super().__init__()
        self.config = config
        d, patches = config.d_model, config.rows * config.cols
        self.vision_in = nn.Sequential(nn.LayerNorm(config.vision_dim), nn.Linear(config.vision_dim, d))
        self.camera_in = nn.Sequential(nn.Linear(CAMERA_DIM, d), nn.GELU(), nn.Linear(d, d))
        self.position = nn.Parameter(torch.randn(patches, d) * 0.02)
        self.language_in = nn.Sequential(nn.LayerNorm(config.language_dim), nn.Linear(config.language_dim, d))
        self.request_in = nn.Linear(REQUEST_DIM, d)
        self.token_type = nn.Parameter(torch.randn(3, d) * 0.02)     # none, language, patch
        self.none_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.none_bias = nn.Parameter(torch.zeros(1))                   # a learned prior for refusing
        self.vision = _encoder(config, config.vision_layers) if config.vision_layers else nn.Identity()
        self.fusion = _encoder(config, config.fusion_layers)
        self.out_norm = nn.LayerNorm(d)
        self.none_heat = nn.Linear(d, 1)
        # per full-resolution patch: (its embedding, its cell's fused token, the fused none token) -> heat, offsets
        self.patch_head = nn.Sequential(nn.LayerNorm(3 * d), nn.Linear(3 * d, config.feedforward), nn.GELU(),
                                        nn.Linear(config.feedforward, config.feedforward), nn.GELU(),
                                        nn.Linear(config.feedforward, 2 + OFFSET_DIM))
        for name, dim in (("camera", CAMERA_DIM), ("offset", OFFSET_DIM)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))

    def fit_statistics(self, camera: np.ndarray, offsets: np.ndarray) -> None:
        """Per-dimension mean and std of the camera channels and the grasp offsets (std floored)."""
        for name, values in (("camera", camera), ("offset", offsets)):
            values = torch.as_tensor(np.asarray(values, np.float32))
            getattr(self, f"{name}_mean").copy_(values.mean(0))
            getattr(self, f"{name}_std").copy_(values.std(0).clamp_min(1e-3))

    def normalise_offsets(self, offsets: torch.Tensor) -> torch.Tensor:
        return (offsets - self.offset_mean) / self.offset_std

    def denormalise_offsets(self, normalised: torch.Tensor) -> torch.Tensor:
        return normalised * self.offset_std + self.offset_mean

    def forward(self, batch: MaskFreeBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (B, 1 + P): column 0 "none", then the patches row-major; normalised offsets (B, P, OFFSET_DIM);
        per patch, the logit that it shows the named object (B, P): a training aid, dense where the heatmap
        has one right patch)."""
        camera = (batch.camera - self.camera_mean) / self.camera_std
        fine = self.vision_in(batch.patches) + self.camera_in(camera) + self.position
        rows, cols, pool = self.config.rows, self.config.cols, self.config.pool
        cells = (-(-rows // pool), -(-cols // pool))
        grid = fine.transpose(1, 2).reshape(len(fine), -1, rows, cols)
        coarse = nn.functional.adaptive_avg_pool2d(grid, cells).flatten(2).transpose(1, 2) + self.token_type[2]
        coarse = self.vision(coarse)[batch.frame]
        language = torch.cat([self.request_in(batch.request).unsqueeze(1), self.language_in(batch.language)], 1)
        language = language + self.token_type[1]
        none = (self.none_token + self.token_type[0]).expand(len(language), -1, -1)
        tokens = torch.cat([none, language, coarse], 1)
        keep = torch.zeros(len(language), 1, dtype=torch.bool, device=language.device)
        pad = torch.cat([keep, keep, batch.language_pad, torch.zeros(coarse.shape[:2], dtype=torch.bool,
                                                                        device=language.device)], 1)
        fused = self.out_norm(self.fusion(tokens, src_key_padding_mask=pad))
        summary, cells_out = fused[:, 0], fused[:, 1 + language.shape[1]:]
        up = nn.functional.interpolate(cells_out.transpose(1, 2).reshape(len(fused), -1, *cells), size=(rows, cols),
                                       mode="nearest").flatten(2).transpose(1, 2)
        patches = fine[batch.frame]
        out = self.patch_head(torch.cat([patches, up, summary.unsqueeze(1).expand_as(patches)], -1))
        logits = torch.cat([self.none_heat(summary) + self.none_bias, out[..., 0]], 1)
        return logits, out[..., 2:], out[..., 1]
