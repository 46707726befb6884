"""`dino-vla bench`: per-stage latency and throughput of the perception pipeline on a photo, beside the naive
once-per-box segmenter measured in the same run. `--graph`: the product path instead, a camera stream played
at camera rate into the features, detector and segmenter nodes over DDS, beside the in-process pipeline on the
same frames."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dino_vla.commands.common import (add_config_option, add_dds_option, add_model_options, choose_models,
                                      config_files, fail, image_paths, load_image, load_params, loopback_environment,
                                      on_ros_domain)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="per-stage latency and throughput of the pipeline on a photo")
    p.add_argument("--image", help="photo to run on (default: scikit-image's coffee cup); with --graph a photo or "
                                   "a folder of recorded frames, played in name order and again (default: a "
                                   "MuJoCo render of the simulated table, --seed)")
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
    g = p.add_argument_group("the node graph (--graph)")
    g.add_argument("--graph", action="store_true",
                   help="the features, detector and segmenter nodes over loopback DDS: a camera stream at --rate "
                        "for --seconds; per stage and camera -> masks latency, output rate, dropped frames and "
                        "each process's memory and CPU, beside the in-process pipeline on the same frames "
                        "(-n of them, after --warmup)")
    g.add_argument("--rate", type=float, default=30.0, help="camera frames per second (default 30)")
    g.add_argument("--seconds", type=float, default=10.0, help="length of the camera stream (default 10)")
    g.add_argument("--seed", type=int, default=0, help="the simulated scene of the default stream (default 0)")
    g.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE", dest="overrides",
                   help="a parameter of the features, detector or segmenter node (and of the in-process pipeline); "
                        "repeatable; unknown parameters are errors")
    g.add_argument("--one-process", action="store_true",
                   help="the three model nodes in one process on one executor instead of one process each")
    g.add_argument("--warm-up-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="give up when no warm-up frame has been answered by every node by then (default 600; real "
                        "sizes on a busy CPU take minutes per frame)")
    g.add_argument("--log", default="out/bench_graph/nodes.log", help="the nodes' output (default %(default)s)")
    add_config_option(p, ("perception.yaml",))
    add_model_options(p)
    add_dds_option(p)
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from dino_vla.instruction import InstructionError, parse_instruction
    from dino_vla.models.loading import ModelUnavailableError
    from dino_vla.pipeline import PerceptionPipeline
    from dino_vla.pipeline.benchmark import TIMED_STAGES, benchmark_pipeline, models_for, report_lines

    if args.graph:
        return graph_main(args)
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
    params, weights = _model_params(args, needed)
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


def graph_main(args: argparse.Namespace) -> int:
    from dino_vla.config import ConfigError, parse_override
    from dino_vla.instruction import InstructionError, parse_instruction
    from dino_vla.models.loading import ModelUnavailableError
    from dino_vla.pipeline import STAGES, PerceptionPipeline
    from dino_vla.pipeline.graph_benchmark import in_process_report, report_lines
    from dino_vla.ros.graph_bench import bench_graph

    if args.stages or args.real_size and args.models != "auto":
        fail("--graph runs every stage: --stages does not apply, and --real-size chooses the models")
    if not (args.rate > 0 and args.seconds > 0 and args.rate * args.seconds >= 1 and args.warm_up_timeout > 0):
        fail("--rate and --seconds must be > 0 and give at least one frame, --warm-up-timeout > 0")
    if args.runs < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        fail("--runs and --threads must be >= 1, --warmup >= 0")
    try:
        query = parse_instruction(args.instruction)
        overrides: dict[str, dict] = {}
        for text in args.overrides:
            node, name, value = parse_override(text, STAGES)
            overrides.setdefault(node, {})[name] = value
    except (InstructionError, ConfigError) as err:
        fail(str(err))
    frames, source = _stream_frames(args)
    params, weights = _model_params(args, STAGES)
    for stage, values in overrides.items():
        params[stage].update(values)
    if args.threads:
        for stage in STAGES:
            overrides.setdefault(stage, {}).setdefault("torch_threads", args.threads)
    env = loopback_environment(args)
    files = config_files(args)
    log_path = Path(args.log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log, on_ros_domain(args, env) as env:
        try:
            report = bench_graph(frames, files, env, log, rate_hz=args.rate, seconds=args.seconds,
                                 instruction=query.instruction, models={s: params[s]["model"] for s in STAGES},
                                 node_params=overrides, device=args.device, one_process=args.one_process,
                                 warm_up_timeout_s=args.warm_up_timeout)
        except RuntimeError as err:
            fail(f"bench --graph: {err}; node logs in {log_path}")
    # after the graph has stopped, so that the two do not share the CPU
    import resource

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        pipeline = PerceptionPipeline.from_config(params, stages=STAGES)
    except ModelUnavailableError as err:
        fail(str(err))
    report.update(
        source=source, rate_hz=args.rate, weights=weights, device=str(pipeline.device),
        instruction=query.instruction, overrides=args.overrides,
        frame={"height": int(frames[0].shape[0]), "width": int(frames[0].shape[1]), "count": len(frames)},
        in_process=in_process_report(pipeline, frames, query, args.runs, args.warmup))
    report["in_process"]["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print("\n".join(report_lines(report)), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _model_params(args: argparse.Namespace, stages: tuple[str, ...]) -> tuple[dict, str]:
    """The parameters of `stages` with the models --real-size or --models choose, and what their weights are."""
    from dino_vla.models.random_init import build_random_models

    params = load_params(args)
    if args.real_size:
        sources = build_random_models("real", stages=stages)
        return ({stage: dict(params[stage], model=getattr(sources, stage)) for stage in stages},
                "RANDOM weights at the REAL sizes: measures cost only, outputs are meaningless")
    choice = choose_models(args, params, stages)
    return choice.params, "RANDOM weights (tiny): outputs are meaningless" if choice.random_weights else "pretrained"


def _stream_frames(args: argparse.Namespace):
    """The camera stream's frames and what they are: the --image photo or folder, else one MuJoCo render of
    the simulated table (a static scene: every frame the same image, with its own stamp)."""
    if args.image:
        paths = image_paths([args.image])
        frames = [load_image(path) for path in paths]
        if len({f.shape for f in frames}) > 1:
            fail(f"--image {args.image}: the frames differ in size")
        return frames, f"{len(frames)} recorded frame(s) from {args.image}"
    from dino_vla.sim.mujoco_sim import TabletopSim
    from dino_vla.sim.scene import random_scene

    with TabletopSim(random_scene(args.seed)) as sim:
        return [sim.render().rgb], f"MuJoCo render of the simulated table, seed {args.seed} (static scene)"
