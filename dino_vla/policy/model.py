"""The VLA grasp policy network: language (text + request), object and vision tokens fused by a transformer
encoder whose attention between object tokens is biased by their relative position (a learned function of
the pair's offset and distance, per layer and head: "the cup next to the box" is a comparison of distances
that plain attention over absolute positions learns slowly); a learned
action query reads the fused sequence and points at one object token, or at a learned "none of these" token
(the named object is not there: refuse), and regresses the grasp relative to the chosen object's box (offset,
yaw turn, opening), in units normalised by statistics stored with the weights.

Relations get a second, compositional route to the pointer: a reference pointer grounds each reference
phrase (encoded alone, tokens.reference_vectors) to an object, trained on every relation's references, and
a learned function of the relation type and a pair's relative position scores each object against the
objects the references point at; that score is added to the object's pointer logit. Neither part sees the
relation and the reference together, so "next to the jar" works when "next to" was learned with other
references and "the jar" with other relations."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from dino_vla.geometry.localise import LocaliserSettings
from dino_vla.policy.tokens import (GEOMETRY_DIM, REQUEST_COLOURS, REQUEST_DIM, REQUEST_SIZES, TARGET_DIM,
                                   TOKENS_VERSION, ViewSettings)


@dataclass(frozen=True)
class PolicyConfig:
    vision_dim: int                    # the feature model's embedding size
    language_dim: int                  # the text encoder's hidden size
    d_model: int = 64
    heads: int = 4
    fusion_layers: int = 3
    decoder_layers: int = 1
    feedforward: int = 128
    dropout: float = 0.1
    view: ViewSettings = field(default_factory=ViewSettings)
    tokens_version: int = TOKENS_VERSION

    def __post_init__(self):
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} must be a multiple of heads {self.heads}")
        for name in ("vision_dim", "language_dim", "d_model", "heads", "fusion_layers", "decoder_layers",
                     "feedforward"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "PolicyConfig":
        raw = json.loads(text)
        raw.setdefault("tokens_version", 1)   # written before versions were: the first token design
        view = raw.pop("view")
        view = ViewSettings(**{**view, "localiser": LocaliserSettings(**view["localiser"])})
        return cls(**raw, view=view)


@dataclass
class Batch:
    """Padded token inputs of B observations (pads are True in the *_pad masks)."""

    language: torch.Tensor       # (B, T, language_dim)
    language_pad: torch.Tensor   # (B, T) bool
    request: torch.Tensor        # (B, REQUEST_DIM) the parse's one-hots (tokens.request_vector)
    vision: torch.Tensor         # (B, V, vision_dim)
    geometry: torch.Tensor       # (B, N, GEOMETRY_DIM) raw
    pooled: torch.Tensor         # (B, N, vision_dim)
    coverage: torch.Tensor       # (B, N)
    object_pad: torch.Tensor     # (B, N) bool
    references: torch.Tensor     # (B, R, language_dim) each reference phrase's mean token state
    reference_pad: torch.Tensor  # (B, R) bool

    def to(self, device) -> "Batch":
        return Batch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


class GraspPolicyNet(nn.Module):
    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        grid = config.view.vision_grid
        self.language_in = nn.Sequential(nn.LayerNorm(config.language_dim), nn.Linear(config.language_dim, d))
        self.request_in = nn.Linear(REQUEST_DIM, d)
        self.vision_in = nn.Sequential(nn.LayerNorm(config.vision_dim), nn.Linear(config.vision_dim, d))
        self.vision_position = nn.Parameter(torch.randn(grid * grid, d) * 0.02)
        self.pooled_norm = nn.LayerNorm(config.vision_dim)
        self.object_in = nn.Sequential(nn.Linear(GEOMETRY_DIM + config.vision_dim + 1, d), nn.GELU(),
                                       nn.Linear(d, d))
        self.token_type = nn.Parameter(torch.randn(3, d) * 0.02)    # language, object, vision
        self.none_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)  # "none of these objects"
        self.none_bias = nn.Parameter(torch.zeros(1))                  # a learned prior for refusing
        layer = nn.TransformerEncoderLayer(d, config.heads, config.feedforward, config.dropout,
                                           batch_first=True, norm_first=True)
        self.fusion = nn.TransformerEncoder(layer, config.fusion_layers, enable_nested_tensor=False)
        self.pair_bias = nn.Sequential(nn.Linear(PAIR_DIM, d), nn.GELU(),
                                       nn.Linear(d, config.fusion_layers * config.heads))
        self.action_query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        decoder = nn.TransformerDecoderLayer(d, config.heads, config.feedforward, config.dropout,
                                             batch_first=True, norm_first=True)
        self.reader = nn.TransformerDecoder(decoder, config.decoder_layers)
        self.pointer_query = nn.Linear(d, d)
        self.pointer_key = nn.Linear(d, d)
        self.grasp_head = nn.Sequential(nn.LayerNorm(2 * d), nn.Linear(2 * d, config.feedforward), nn.GELU(),
                                        nn.Linear(config.feedforward, TARGET_DIM))
        # normalisation statistics, fitted on the training set (fit_statistics) and saved with the weights
        self.register_buffer("geometry_mean", torch.zeros(GEOMETRY_DIM))
        self.register_buffer("geometry_std", torch.ones(GEOMETRY_DIM))
        self.register_buffer("target_mean", torch.zeros(TARGET_DIM))
        self.register_buffer("target_std", torch.ones(TARGET_DIM))
        # the relation route: reference pointer, and the relation's score of a pair's relative position
        self.reference_in = nn.Sequential(nn.LayerNorm(config.language_dim), nn.Linear(config.language_dim, d))
        self.reference_key = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.relation_score = nn.Sequential(nn.Linear(PAIR_DIM + RELATION_DIM, d), nn.GELU(), nn.Linear(d, 1))

    def fit_statistics(self, geometry: np.ndarray, targets: np.ndarray) -> None:
        """Per-dimension mean and std of object geometry and grasp targets (std floored so a constant
        dimension, e.g. the turn of round objects, does not blow up)."""
        for name, values in (("geometry", geometry), ("target", targets)):
            values = torch.as_tensor(np.asarray(values, np.float32))
            getattr(self, f"{name}_mean").copy_(values.mean(0))
            getattr(self, f"{name}_std").copy_(values.std(0).clamp_min(1e-3))

    def normalise_targets(self, targets: torch.Tensor) -> torch.Tensor:
        return (targets - self.target_mean) / self.target_std

    def denormalise_targets(self, normalised: torch.Tensor) -> torch.Tensor:
        return normalised * self.target_std + self.target_mean

    def _fuse(self, tokens: torch.Tensor, pad: torch.Tensor, pairs: torch.Tensor, start: int) -> torch.Tensor:
        """The fusion encoder, with each layer's attention between the object tokens (at start..start+N)
        biased by pair_bias of their relative position (pairs: pair_features), and padded keys masked out."""
        b, length, _ = tokens.shape
        n, heads, layers = pairs.shape[1], self.config.heads, self.config.fusion_layers
        bias = self.pair_bias(pairs).view(b, n, n, layers, heads).permute(3, 0, 4, 1, 2)
        masks = tokens.new_zeros(layers, b, heads, length, length)
        masks[..., start:start + n, start:start + n] = bias
        masks = masks.masked_fill(pad[None, :, None, None, :], float("-inf"))
        out = tokens
        for layer, mask in zip(self.fusion.layers, masks):
            out = layer(out, src_mask=mask.reshape(b * heads, length, length))
        return out

    def forward(self, batch: Batch, with_references: bool = False):
        """(pointer logits (B, 1 + N): column 0 "none of these", then the objects, pads at -inf; normalised
        grasp targets (B, N, TARGET_DIM) per object); with_references, also the reference pointer's logits
        (B, R, N) (pads at -1e9)."""
        geometry = (batch.geometry - self.geometry_mean) / self.geometry_std
        embedded = self.object_in(torch.cat([geometry, self.pooled_norm(batch.pooled),
                                             batch.coverage.unsqueeze(-1)], -1))
        objects = embedded + self.token_type[1]
        pairs = pair_features(batch.geometry)
        language = torch.cat([self.request_in(batch.request).unsqueeze(1), self.language_in(batch.language)], 1)
        language = language + self.token_type[0]
        language_pad = torch.cat([torch.zeros_like(batch.language_pad[:, :1]), batch.language_pad], 1)
        vision = self.vision_in(batch.vision) + self.vision_position + self.token_type[2]
        none = self.none_token.expand(len(objects), -1, -1)
        tokens = torch.cat([language, none, objects, vision], 1)
        vision_pad = torch.zeros(vision.shape[:2], dtype=torch.bool, device=vision.device)
        choices_pad = torch.cat([torch.zeros_like(batch.object_pad[:, :1]), batch.object_pad], 1)
        pad = torch.cat([language_pad, choices_pad, vision_pad], 1)
        fused = self._fuse(tokens, pad, pairs, start=language.shape[1] + 1)
        query = self.reader(self.action_query.expand(len(tokens), -1, -1), fused, memory_key_padding_mask=pad)
        start = language.shape[1]
        choices = fused[:, start:start + 1 + objects.shape[1]]
        logits = torch.einsum("bd,bnd->bn", self.pointer_query(query[:, 0]), self.pointer_key(choices))
        logits = logits / math.sqrt(self.config.d_model)
        reference_logits, relation = self._relation(batch, embedded, pairs)
        logits = torch.cat([logits[:, :1] + self.none_bias, logits[:, 1:] + relation], 1)
        logits = logits.masked_fill(choices_pad, float("-inf"))
        object_out = choices[:, 1:]
        paired = torch.cat([query.expand(-1, object_out.shape[1], -1), object_out], -1)
        if with_references:
            return logits, self.grasp_head(paired), reference_logits
        return logits, self.grasp_head(paired)

    def _relation(self, batch: Batch, embedded: torch.Tensor, pairs: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(reference logits (B, R, N), each object's relation score (B, N)): the relation's learned score of
        object i's position relative to object j, summed over j weighted by how much the references point
        at j (0 without references)."""
        d = self.config.d_model
        keys = self.reference_key(embedded)
        reference_logits = torch.einsum("brd,bnd->brn", self.reference_in(batch.references), keys) / math.sqrt(d)
        reference_logits = reference_logits.masked_fill(batch.object_pad[:, None, :], -1e9)
        weights = (torch.softmax(reference_logits, -1) * (~batch.reference_pad).unsqueeze(-1).float()).sum(1)
        b, n = weights.shape
        relation = batch.request[:, -RELATION_DIM:]
        scores = self.relation_score(torch.cat([pairs, relation[:, None, None, :].expand(b, n, n, -1)], -1))[..., 0]
        scores = scores.masked_fill(torch.eye(n, dtype=torch.bool, device=scores.device), 0.0)
        return reference_logits, torch.einsum("bij,bj->bi", scores, weights)


PAIR_DIM = 5
RELATION_DIM = REQUEST_DIM - len(REQUEST_COLOURS) - len(REQUEST_SIZES)   # the request's relation one-hot + anchor


def pair_features(geometry: torch.Tensor) -> torch.Tensor:
    """(B, N, N, PAIR_DIM) of raw object geometry (B, N, GEOMETRY_DIM): for each pair (i, j), j's offset from
    i on the table (dx, dy, in 10 cm) and in the image (du, dv, in tenths of its width/height) and their
    distance on the table."""
    xy, uv = geometry[..., 0:2], geometry[..., 10:12]
    table = (xy[:, None, :, :] - xy[:, :, None, :]) / 0.1
    image = (uv[:, None, :, :] - uv[:, :, None, :]) / 0.1
    return torch.cat([table, image, table.norm(dim=-1, keepdim=True)], -1)


def collate(language: list[np.ndarray], request: list[np.ndarray], vision: list[np.ndarray],
            geometry: list[np.ndarray], pooled: list[np.ndarray], coverage: list[np.ndarray],
            references: list[np.ndarray] | None = None) -> Batch:
    """Pad B observations' token arrays into one Batch; references: each observation's (R, language_dim)
    tokens.reference_vectors (None: no references)."""
    def pad(arrays: list[np.ndarray], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(1, max(len(a) for a in arrays))
        out = torch.zeros(len(arrays), longest, width)
        mask = torch.ones(len(arrays), longest, dtype=torch.bool)
        for i, a in enumerate(arrays):
            out[i, :len(a)] = torch.as_tensor(np.asarray(a, np.float32)).reshape(len(a), width)
            mask[i, :len(a)] = False
        return out, mask

    language_t, language_pad = pad(language, language[0].shape[-1])
    geometry_t, object_pad = pad(geometry, GEOMETRY_DIM)
    pooled_t, _ = pad(pooled, vision[0].shape[-1])
    coverage_t, _ = pad([np.asarray(c).reshape(-1, 1) for c in coverage], 1)
    width = language[0].shape[-1]
    references_t, reference_pad = pad([np.asarray(r, np.float32).reshape(-1, width) for r in references]
                                      if references is not None else [np.zeros((0, width))] * len(language), width)
    return Batch(language_t, language_pad, torch.as_tensor(np.stack(request).astype(np.float32)),
                 torch.as_tensor(np.stack(vision).astype(np.float32)),
                 geometry_t, pooled_t, coverage_t[..., 0], object_pad, references_t, reference_pad)
