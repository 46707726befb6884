"""`dino-vla train`: the VLA grasp policy on a demonstration dataset (seeded, resumable)."""
from __future__ import annotations

import argparse
import json
import sys

from dino_vla.commands.common import fail
from dino_vla.config import OBJECT_FEATURES, OBJECT_GEOMETRIES

RANDOM_TINY = "random-tiny"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the VLA grasp policy on a demonstration dataset (seeded, "
                              "resumable)")
    p.add_argument("dataset", nargs="?", default="out/policy/demos", help="dataset directory (default "
                   "out/policy/demos)")
    p.add_argument("--out", "-o", default="out/policy/checkpoint", help="checkpoint directory, written every "
                   "epoch (default out/policy/checkpoint)")
    p.add_argument("--policy", choices=("object-tokens", "mask-free"), default="object-tokens",
                   help="object-tokens (default): object tokens from instance masks + depth; mask-free: the full "
                   "DINOv2 patch grid + depth, a heatmap over patches (no masks, no detector at run time)")
    p.add_argument("--backbone", default=RANDOM_TINY, help="DINOv2 weights: random-tiny (offline, no "
                   "semantics; the default here) or a hub id / local directory such as facebook/dinov2-small")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--d-model", type=int, help="network width (default 64)")
    p.add_argument("--layers", type=int, help="fusion transformer layers (default 3; mask-free: 2)")
    p.add_argument("--vision-layers", type=int, help="mask-free: self-attention layers over the patches alone, "
                   "once per frame (default 2)")
    p.add_argument("--frames-per-batch", type=int, help="mask-free: camera frames per batch, each with all its "
                   "instructions (default 12; --batch-size is the object-token policy's)")
    p.add_argument("--vision-grid", type=int, help="vision tokens: the patch grid pooled to N x N (default 4)")
    p.add_argument("--object-features", choices=OBJECT_FEATURES, help="object tokens' appearance: mask (default): "
                   "the frame's patch tokens averaged under each mask; crop: the backbone's class token of each "
                   "object's own crop (one more backbone pass per object at run time; the view pretrain-backbone "
                   "--views objects learns from)")
    p.add_argument("--object-geometry", choices=OBJECT_GEOMETRIES, help="object tokens' geometry: full (default): "
                   "position, depth-measured shape and the colour name; position: the position alone, so only "
                   "the appearance feature tells objects apart")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--finetune-backbone", action="store_true", help="train DINOv2 too (default: frozen, its "
                   "tokens cached once); the tuned weights are saved in the checkpoint's backbone/")
    p.add_argument("--backbone-lr", type=float, default=1e-5, help="learning rate of a fine-tuned backbone")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    from dino_vla.dataset.format import DatasetError
    from dino_vla.models.loading import ModelUnavailableError
    from dino_vla.models.random_init import build_random_models, is_random_model
    from dino_vla.policy.checkpoint import CheckpointError, write_model_card
    from dino_vla.training_state import TrainingStateError
    from dino_vla.policy.train import TrainSettings, train

    if args.epochs < 1 or args.batch_size < 1 or not args.lr > 0:
        fail("--epochs and --batch-size must be >= 1 and --lr > 0")
    if args.finetune_backbone and args.object_features == "crop":
        fail("--finetune-backbone trains through the frame's patch tokens: it needs --object-features mask")
    # the package's tiny random-weight DINOv2 is the only backbone to be had offline
    backbone = build_random_models("tiny", stages=("features",)).features if args.backbone == RANDOM_TINY \
        else args.backbone
    if not args.resume and is_random_model(backbone):
        print(f"NOTICE: training on a RANDOM-WEIGHT DINOv2 ({args.backbone}); its features carry no "
              f"pretrained semantics. Pass --backbone facebook/dinov2-small (or a local copy) where the "
              f"weights exist.", file=sys.stderr, flush=True)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                             seed=args.seed, finetune_backbone=args.finetune_backbone,
                             backbone_learning_rate=args.backbone_lr)
    if args.vision_grid is not None and args.vision_grid < 1:
        fail("--vision-grid must be >= 1")
    if args.policy == "mask-free":
        return _mask_free(args, backbone, settings)
    overrides = {k: v for k, v in (("d_model", args.d_model), ("fusion_layers", args.layers)) if v}
    view = {k: v for k, v in (("vision_grid", args.vision_grid), ("object_features", args.object_features),
                              ("object_geometry", args.object_geometry)) if v}
    if view:
        overrides["view"] = view
    try:
        training = train(args.dataset, args.out, backbone, overrides, settings, resume=args.resume,
                         threads=args.threads or 0)
    except (DatasetError, CheckpointError, TrainingStateError, ModelUnavailableError) as err:
        fail(str(err))
    write_model_card(args.out, training)
    print(json.dumps({"checkpoint": args.out, "elapsed_s": training["elapsed_s"],
                      "final": training["history"][-1] if training["history"] else None}))
    return 0


def _mask_free(args: argparse.Namespace, backbone: str, settings) -> int:
    from dino_vla.dataset.format import DatasetError
    from dino_vla.models.loading import ModelUnavailableError
    from dino_vla.policy.checkpoint import CheckpointError, write_model_card
    from dino_vla.policy.maskfree_train import MaskFreeSettings, train_mask_free
    from dino_vla.training_state import TrainingStateError

    if args.finetune_backbone or args.vision_grid or args.object_features or args.object_geometry:
        fail("--finetune-backbone, --vision-grid, --object-features and --object-geometry are the object-token "
             "policy's")
    chosen = {k: v for k, v in (("d_model", args.d_model), ("fusion_layers", args.layers),
                                ("vision_layers", args.vision_layers),
                                ("frames_per_batch", args.frames_per_batch)) if v is not None}
    try:
        network = MaskFreeSettings(**chosen)
        training = train_mask_free(args.dataset, args.out, backbone, settings, network, resume=args.resume,
                                   threads=args.threads or 0)
    except (ValueError, DatasetError, CheckpointError, TrainingStateError, ModelUnavailableError) as err:
        fail(str(err))
    write_model_card(args.out, training)
    print(json.dumps({"checkpoint": args.out, "policy": "mask-free", "elapsed_s": training["elapsed_s"],
                      "final": training["history"][-1] if training["history"] else None}))
    return 0
