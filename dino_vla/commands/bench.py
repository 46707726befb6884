"""`dino-vla bench`: per-stage latency and throughput of the perception pipeline on a photo, beside the naive
once-per-box segmenter measured in the same run."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dino_vla.commands.common import (add_config_option, add_model_options, choose_models, fail, load_image,
                                      load_params)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="per-stage latency and throughput of the pipeline on a photo")
    p.add_argument("--image", help="photo to run on (default: scikit-image's coffee cup)")
    p.add_argument("--instruction", "-i", default="pick up the cup")
    p.add_argument("-n", "--runs", type=int, default=20, help="timed runs per stage (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--stages", nargs="+", metavar="STAGE",
                   help="what to time, of features, detector, segmenter, end_to_end (default all); segmenter "
                        "also times the naive once-per-box baseline; only the models these need are loaded")
    p.add_argument("--real-size", action="store_true",
                   help="random-weight models at the real sizes (DINOv2 ViT-S/14, Grounding DINO-T, "
                        "SAM ViT-B): measures cost without weights")
    p.add_argument("--boxes", type=int, default=3, help="boxes given to the segmenter (default 3)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    add_config_option(p, ("perception.yaml",))
    add_model_options(p)
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from dino_vla.instruction import InstructionError, parse_instruction
    from dino_vla.models.loading import ModelUnavailableError
    from dino_vla.models.random_init import build_random_models
    from dino_vla.pipeline import PerceptionPipeline
    from dino_vla.pipeline.benchmark import TIMED_STAGES, benchmark_pipeline, models_for, report_lines

    stages = tuple(dict.fromkeys(args.stages or TIMED_STAGES))
    unknown = [s for s in stages if s not in TIMED_STAGES]
    if unknown:
        fail(f"--stages: unknown {', '.join(unknown)}; choose from {', '.join(TIMED_STAGES)}")
    if args.runs < 1 or args.warmup < 0 or args.boxes < 1 or (args.threads is not None and args.threads < 1):
        fail("--runs, --boxes and --threads must be >= 1, --warmup >= 0")
    try:
        query = parse_instruction(args.instruction)
    except InstructionError as err:
        fail(str(err))
    if args.image:
        image, image_name = load_image(args.image), args.image
    else:
        from skimage.data import coffee

        image, image_name = np.ascontiguousarray(coffee()), "skimage.data.coffee()"
    if args.threads:
        torch.set_num_threads(args.threads)
    needed = models_for(stages)
    params = load_params(args)
    if args.real_size:
        sources = build_random_models("real", stages=needed)
        params = {stage: dict(params[stage], model=getattr(sources, stage)) for stage in needed}
        weights = "RANDOM weights at the REAL sizes: measures cost only, outputs are meaningless"
    else:
        choice = choose_models(args, params, needed)
        params = choice.params
        weights = "RANDOM weights (tiny): outputs are meaningless" if choice.random_weights else "pretrained"
    try:
        pipeline = PerceptionPipeline.from_config(params, stages=needed)
    except ModelUnavailableError as err:
        fail(str(err))
    report = benchmark_pipeline(pipeline, image, image_name, query, args.runs, args.warmup, args.boxes, stages,
                                weights)
    print("\n".join(report_lines(report)), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
