"""`dino-vla detect`: the perception pipeline on image files; annotated images and a JSON summary."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dino_vla.commands.common import (add_config_option, add_model_options, choose_models, fail, image_paths,
                                      load_image, load_params)

RANDOM_BANNER = "RANDOM WEIGHTS - NOT MEANINGFUL"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("detect", help="annotate image files: boxes, labels, scores, masks; JSON summary")
    p.add_argument("images", nargs="+", help="image files (any format Pillow reads) or folders of them")
    p.add_argument("--instruction", "-i", required=True, help='e.g. "pick up the cup"')
    p.add_argument("--out", "-o", default="annotated.png",
                   help="output image (one input image) or directory (several, or a folder)")
    add_config_option(p, ("perception.yaml",))
    add_model_options(p)
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    from dino_vla.instruction import InstructionError, parse_instruction

    try:
        query = parse_instruction(args.instruction)
    except InstructionError as err:
        fail(str(err))
    paths = image_paths(args.images)   # both before torch is imported: a typo is answered at once

    from PIL import Image

    from dino_vla.models.loading import ModelUnavailableError
    from dino_vla.pipeline import STAGES, PerceptionPipeline
    from dino_vla.pipeline.annotate import annotate

    choice = choose_models(args, load_params(args), STAGES)
    try:
        pipeline = PerceptionPipeline.from_config(choice.params)
    except ModelUnavailableError as err:
        fail(str(err))
    one_file = len(paths) == 1 and not Path(args.images[0]).is_dir() and bool(Path(args.out).suffix)
    outputs = []
    for path in paths:
        image = load_image(path)
        result = pipeline.run(image, query)
        out_path = Path(args.out) if one_file else Path(args.out) / f"{Path(path).stem}_annotated.png"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        banner = RANDOM_BANNER if choice.random_weights else None
        Image.fromarray(annotate(image, result.detections, result.masks, banner)).save(out_path)
        outputs.append(_summary(path, str(out_path), result, {s: choice.params[s]["model"] for s in STAGES},
                                choice.random_weights))
    print(json.dumps(outputs[0] if one_file else outputs, indent=2))
    return 0


def _summary(path: str, out_path: str, result, models: dict[str, str], random_weights: bool) -> dict:
    dets = result.detections
    return {
        "image": path,
        "annotated": out_path,
        "instruction": result.query.instruction,
        "prompt": result.query.prompt,
        "target": result.query.target,
        "models": models,
        "random_weights": random_weights,
        "meaningful": not random_weights,
        "detections": [
            {"phrase": dets.phrases[i], "score": round(float(dets.scores[i]), 4),
             "box_xyxy": [round(float(v), 1) for v in dets.boxes[i]],
             "mask_pixels": int(result.masks.masks[i].sum()) if result.masks is not None else None}
            for i in range(len(dets))],
        "features": None if result.features is None else
        {"dim": result.features.dim, "grid": list(result.features.grid)},
        "timings_ms": {k: round(v, 1) for k, v in result.timings_ms.items()},
    }
