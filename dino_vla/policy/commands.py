"""The policy's commands (`dino-vla record-sim`, `train`, `eval`): argument handling around the core."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from dino_vla.models.random_init import build_random_models, is_random_model

RANDOM_TINY = "random-tiny"


def resolve_backbone(choice: str) -> str:
    """A DINOv2 source: `random-tiny` (the package's tiny random-weight DINOv2, the only one available
    offline), or a hub id / local directory of pretrained weights."""
    if choice == RANDOM_TINY:
        return build_random_models("tiny").features
    return choice


def run_record_sim(args) -> int:
    from dino_vla.policy.sim_expert import record

    counts = record(args.out, args.scenes, args.first_seed, append=args.append)
    print(json.dumps({"dataset": args.out, **counts}))
    return 0


def run_train(args) -> int:
    from dino_vla.policy.train import TrainSettings, train

    backbone = resolve_backbone(args.backbone)
    if not args.resume and is_random_model(backbone):
        print(f"NOTICE: training on a RANDOM-WEIGHT DINOv2 ({args.backbone}); its features carry no "
              f"pretrained semantics. Pass --backbone facebook/dinov2-small (or a local copy) where the "
              f"weights exist.", file=sys.stderr, flush=True)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                             seed=args.seed, finetune_backbone=args.finetune_backbone,
                             backbone_learning_rate=args.backbone_lr)
    overrides = {k: v for k, v in (("d_model", args.d_model), ("fusion_layers", args.layers)) if v}
    training = train(args.dataset, args.out, backbone, overrides, settings, resume=args.resume,
                     threads=args.threads or 0)
    _write_model_card(Path(args.out), training)
    print(json.dumps({"checkpoint": args.out, "elapsed_s": training["elapsed_s"],
                      "final": training["history"][-1] if training["history"] else None}))
    return 0


def _write_model_card(out: Path, training: dict) -> None:
    from dino_vla.policy.checkpoint import read_info

    info = read_info(out)
    backbone = info.backbone
    kind = ("RANDOM-WEIGHT tiny DINOv2 (stored in backbone/)" if is_random_model(backbone) else
            f"{backbone} (fine-tuned by this run)" if training["settings"].get("finetune_backbone") else backbone)
    last = training["history"][-1] if training["history"] else {}
    (out / "README.md").write_text(
        "# dino_vla grasp policy checkpoint\n\n"
        f"- vision backbone: {kind}\n- text encoder: {info.text_encoder} (real pretrained weights)\n"
        f"- dataset: {training['dataset_source']} ({training['train_episodes']} training, "
        f"{training['validation_episodes']} validation episodes)\n"
        f"- settings: {json.dumps(training['settings'])}\n"
        f"- network: {info.config.to_json()}\n"
        f"- last epoch (validation, held-out scenes): {json.dumps(last)}\n"
        f"- training time: {training.get('elapsed_s')} s\n\n"
        "Made by `dino-vla train`; `dino-vla train --resume` continues the run while "
        "training_state.safetensors is beside it. Success rates are measured by `dino-vla eval`, not here.\n")


def run_eval(args) -> int:
    from dino_vla.cli import _config_files
    from dino_vla.config import load_config
    from dino_vla.policy.evaluate import evaluate, report_lines, write_report
    from dino_vla.policy.runner import shipped_checkpoint

    params = load_config(*_config_files(args, ("perception.yaml", "pick.yaml", "sim.yaml")))["pick"]
    checkpoint = shipped_checkpoint() if args.checkpoint == "shipped" else args.checkpoint
    report = evaluate(checkpoint, args.scenes, args.first_seed, params, split=args.paraphrases,
                      device=args.device)
    print(f"eval: {args.scenes} held-out scenes (seeds {args.first_seed}..), 2-5 distractors, "
          f"{args.paraphrases} paraphrases, checkpoint {checkpoint}")
    print("\n".join(report_lines(report)))
    if args.json:
        write_report(report, args.json)
    return 0
