"""`dino-vla`: run the perception pipeline on image files, benchmark it, or start the node graph."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _load_image(path: str):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise SystemExit(f"dino-vla: cannot read image {path!r}: {err}") from None


def _config(args):
    from dino_vla.config import ConfigError, default_config_path, load_config

    try:
        params = load_config(args.config or default_config_path())
    except ConfigError as err:
        raise SystemExit(f"dino-vla: {err}") from None
    if getattr(args, "device", None):
        for p in params.values():
            p["device"] = args.device
    return params


def _choose(args, params, stages):
    from dino_vla.pipeline import choose_models

    choice = choose_models(params, args.models, stages)
    if choice.notice:
        print(choice.notice, file=sys.stderr, flush=True)  # first line the user sees
    return choice


def cmd_detect(args) -> int:
    from dino_vla.instruction import InstructionError, parse_instruction
    from dino_vla.models.loading import ModelUnavailableError
    from dino_vla.pipeline import PerceptionPipeline
    from dino_vla.pipeline.annotate import annotate

    try:
        query = parse_instruction(args.instruction)
    except InstructionError as err:
        raise SystemExit(f"dino-vla: {err}") from None
    choice = _choose(args, _config(args), ("features", "detector", "segmenter"))
    try:
        pipeline = PerceptionPipeline.from_config(choice.params)
    except ModelUnavailableError as err:
        raise SystemExit(f"dino-vla: {err}") from None
    outputs = []
    for path in args.images:
        image = _load_image(path)
        result = pipeline.run(image, query)
        out_path = _output_path(args.out, path, len(args.images))
        banner = "RANDOM WEIGHTS - NOT MEANINGFUL" if choice.random_weights else None
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.fromarray(annotate(image, result.detections, result.masks, banner)).save(out_path)
        outputs.append(_summary(path, out_path, result, choice))
    print(json.dumps(outputs[0] if len(outputs) == 1 else outputs, indent=2))
    return 0


def _output_path(out: str, image_path: str, n_images: int) -> str:
    if n_images == 1 and Path(out).suffix:
        return out
    return str(Path(out) / f"{Path(image_path).stem}_annotated.png")


def _summary(path, out_path, result, choice) -> dict:
    dets = result.detections
    return {
        "image": path,
        "annotated": out_path,
        "instruction": result.query.instruction,
        "prompt": result.query.prompt,
        "target": result.query.target,
        "models": {stage: p["model"] for stage, p in choice.params.items()},
        "random_weights": choice.random_weights,
        "meaningful": not choice.random_weights,
        "detections": [
            {"phrase": dets.phrases[i], "score": round(float(dets.scores[i]), 4),
             "box_xyxy": [round(float(v), 1) for v in dets.boxes[i]],
             "mask_pixels": int(result.masks.masks[i].sum()) if result.masks is not None else None}
            for i in range(len(dets))],
        "features": None if result.features is None else
        {"dim": result.features.dim, "grid": list(result.features.grid)},
        "timings_ms": {k: round(v, 1) for k, v in result.timings_ms.items()},
    }


PERCEPTION_CHOICES = ("auto", "models", "ground-truth")
GROUND_TRUTH_BANNER = "SIMULATOR GROUND-TRUTH SEGMENTATION (no detector/segmenter weights)"


def _config_files(args, names: tuple[str, ...]) -> list[str]:
    """--config files as given, else the package's config/<names> in order (later ones override)."""
    from dino_vla.config import ConfigError, config_dir, load_config

    try:
        files = args.config or [str(config_dir() / name) for name in names]
        load_config(*files)  # refuse a bad file here, not as a node crash later
    except ConfigError as err:
        raise SystemExit(f"dino-vla: {err}") from None
    return files


def _choose_perception(args, files: list[str]) -> tuple[bool, str | None]:
    """(detector + segmenter models?, banner for the visual record). auto: the models when their
    pretrained weights can be had, else the simulator's ground truth, said in one line up front."""
    from dino_vla.config import load_config
    from dino_vla.models.loading import how_to_supply, weights_obtainable

    if args.perception == "models":
        return True, None
    if args.perception == "ground-truth":
        print(f"NOTICE: --perception ground-truth: {GROUND_TRUTH_BANNER.lower()} stands in for Grounding "
              "DINO + SAM", file=sys.stderr, flush=True)
        return False, GROUND_TRUTH_BANNER
    params = load_config(*files)
    missing = [params[s]["model"] for s in ("detector", "segmenter")
               if not weights_obtainable(params[s]["model"])]
    if not missing:
        return True, None
    print(f"NOTICE: no pretrained weights for {', '.join(missing)} can be loaded here, so the simulator's "
          f"GROUND-TRUTH segmentation stands in for Grounding DINO + SAM (labelled 'simulator ground truth' in "
          f"every output); {how_to_supply(missing, '<stage>.model in config/perception.yaml')}.",
          file=sys.stderr, flush=True)
    return False, GROUND_TRUTH_BANNER


def cmd_sim_pick(args) -> int:
    from dino_vla.ros.pick_client import run_sim_pick

    return run_sim_pick(args)


def cmd_bench_pick(args) -> int:
    from dino_vla.pick_bench import run_pick_benchmark

    return run_pick_benchmark(args)


def cmd_bench(args) -> int:
    from dino_vla.bench import run_benchmark

    return run_benchmark(args)


def cmd_launch(args) -> int:
    from dino_vla.ros.launcher import run_graph

    return run_graph(args)


def cmd_record_sim(args) -> int:
    from dino_vla.policy.commands import run_record_sim

    return run_record_sim(args)


def cmd_train(args) -> int:
    from dino_vla.policy.commands import run_train

    return run_train(args)


def cmd_eval(args) -> int:
    from dino_vla.policy.commands import run_eval

    return run_eval(args)


def build_parser() -> argparse.ArgumentParser:
    from dino_vla.pipeline import MODEL_CHOICES

    parser = argparse.ArgumentParser(prog="dino-vla", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--config", help="ROS 2 params file (default: config/perception.yaml)")
        p.add_argument("--device", help="override every stage's device (auto, cpu, cuda, cuda:N)")
        p.add_argument("--models", choices=MODEL_CHOICES, default="auto",
                       help="auto: pretrained weights where they can be had, else tiny random-weight "
                            "models with a notice; pretrained: fail without weights; tiny: random weights")

    p = sub.add_parser("detect", help="annotate image files: boxes, labels, scores, masks; JSON summary")
    p.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    p.add_argument("--instruction", "-i", required=True, help='e.g. "pick up the cup"')
    p.add_argument("--out", "-o", default="annotated.png",
                   help="output image (one input) or directory (several inputs)")
    common(p)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("bench", help="per-stage latency and throughput of the pipeline on a photo")
    p.add_argument("--image", help="photo to run on (default: scikit-image's coffee cup)")
    p.add_argument("--instruction", "-i", default="pick up the cup")
    p.add_argument("-n", "--runs", type=int, default=20, help="timed runs per stage (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--real-size", action="store_true",
                   help="random-weight models at the real sizes (DINOv2 ViT-S/14, Grounding DINO-T, "
                        "SAM ViT-B): measures cost without weights")
    p.add_argument("--boxes", type=int, default=3, help="boxes given to the segmenter (default 3)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    common(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("launch", help="start the perception node graph here (where `ros2 launch` "
                                      "does not exist), on the loopback DDS profile")
    p.add_argument("--instruction", "-i", help="initial instruction (default: from the config)")
    p.add_argument("--image-topic", default="/camera/color/image_raw", help="camera topic to subscribe")
    p.add_argument("--namespace", default="", help="namespace of the nodes")
    p.add_argument("--dds-profile", help="Fast DDS profile (default: config/fastdds_loopback.xml)")
    common(p)
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("sim-pick", help="the simulated pick: MuJoCo table-top + the pick node graph over "
                                        "loopback DDS, one Pick goal, a visual record and a summary")
    p.add_argument("--instruction", "-i", default="pick up the cup")
    p.add_argument("--seed", type=int, default=0, help="scene layout (default 0)")
    p.add_argument("--out", "-o", default="out/sim_pick", help="directory for the record (default out/sim_pick)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the pick result")
    p.add_argument("--perception", choices=PERCEPTION_CHOICES, default="auto",
                   help="models: Grounding DINO + SAM nodes; ground-truth: the simulator's segmentation; "
                        "auto: models when their pretrained weights can be had")
    p.add_argument("--config", action="append", help="params file (repeatable, later override earlier; "
                                                     "default: config/perception.yaml, pick.yaml, policy.yaml, sim.yaml)")
    p.add_argument("--grasp-source", choices=("planner", "policy"), default="planner",
                   help="planner: the geometric grasp planner; policy: the VLA policy node (config/policy.yaml's "
                        "checkpoint, default the shipped one) on DINOv2 features and class-agnostic masks")
    p.add_argument("--device", help="torch device of the model nodes (auto, cpu, cuda, cuda:N)")
    p.add_argument("--dds-profile", help="Fast DDS profile (default: config/fastdds_loopback.xml)")
    p.set_defaults(func=cmd_sim_pick)

    p = sub.add_parser("bench-pick", help="pick success, wrong-object rate, localisation error and timings "
                                          "over seeded simulated scenes, beside an oracle grasp")
    p.add_argument("-n", "--scenes", type=int, default=50, help="seeded scenes per target (default 50)")
    p.add_argument("--targets", nargs="+", help="catalogue objects to pick (default: cup bottle box block ball can)")
    p.add_argument("--distractors", type=int, default=3, help="other objects per scene (default 3)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--perception", choices=PERCEPTION_CHOICES, default="auto",
                   help="models, ground-truth, or auto (models when their pretrained weights can be had)")
    p.add_argument("--config", action="append", help="params file (repeatable; default: config/perception.yaml, "
                                                     "pick.yaml, sim.yaml)")
    p.add_argument("--json", help="also write the figures and every episode to this JSON file")
    p.set_defaults(func=cmd_bench_pick)

    p = sub.add_parser("record-sim", help="record demonstrations of the simulator's scripted expert (seeded "
                       "scenes, 2-5 distractors, every object a target, training paraphrases)")
    p.add_argument("--out", "-o", default="out/policy/demos", help="dataset directory (default out/policy/demos)")
    p.add_argument("-n", "--scenes", type=int, default=1000, help="scenes to record (default 1000)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--append", action="store_true", help="add to an existing dataset")
    p.set_defaults(func=cmd_record_sim)

    p = sub.add_parser("train", help="train the VLA grasp policy on a demonstration dataset (seeded, resumable)")
    p.add_argument("dataset", nargs="?", default="out/policy/demos", help="dataset directory (default "
                   "out/policy/demos)")
    p.add_argument("--out", "-o", default="out/policy/checkpoint", help="checkpoint directory, written every "
                   "epoch (default out/policy/checkpoint)")
    p.add_argument("--backbone", default="random-tiny", help="DINOv2 weights: random-tiny (offline, no "
                   "semantics; the default here) or a hub id / local directory such as facebook/dinov2-small")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--d-model", type=int, help="network width (default 64)")
    p.add_argument("--layers", type=int, help="fusion transformer layers (default 2)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--finetune-backbone", action="store_true", help="train DINOv2 too (default: frozen, its "
                   "tokens cached once); the tuned weights are saved in the checkpoint's backbone/")
    p.add_argument("--backbone-lr", type=float, default=1e-5, help="learning rate of a fine-tuned backbone")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="policy vs geometric baseline on held-out seeded sim scenes and held-out "
                       "paraphrases: success, correct-object and wrong-object rates, time per decision")
    p.add_argument("--checkpoint", default="shipped", help="checkpoint directory (default: the shipped one)")
    p.add_argument("-n", "--scenes", type=int, default=100, help="held-out scenes (default 100)")
    p.add_argument("--first-seed", type=int, default=1_000_000, help="first scene seed (default 1000000; "
                   "record-sim uses 0..)")
    p.add_argument("--paraphrases", choices=("eval", "train"), default="eval",
                   help="held-out (eval, default) or training sentence templates")
    p.add_argument("--config", action="append", help="params file for the baseline planner (repeatable)")
    p.add_argument("--device", default="cpu", help="torch device for the policy and features")
    p.add_argument("--json", help="also write every trial to this JSON file")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
