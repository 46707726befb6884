"""What the subcommands share: the repeatable --config, --device and --models, reading and validating the
parameters, choosing between pretrained weights, tiny random-weight models and the simulator's stand-in
(each said to the user up front), reading images, the loopback DDS environment on a ROS domain of the
command's own, and one way to fail.

Nothing outside dino_vla/cli.py and dino_vla/commands imports this: library code takes typed arguments."""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator, NoReturn

from dino_vla.config import MODEL_CHOICES
from dino_vla.types import IMAGE_SUFFIXES

PERCEPTION_CHOICES = ("auto", "models", "ground-truth")
GROUND_TRUTH_BANNER = "SIMULATOR GROUND-TRUTH SEGMENTATION (no detector/segmenter weights)"


def fail(message: str) -> NoReturn:
    """End the command with exit code 1 and one line on stderr."""
    raise SystemExit(f"dino-vla: {message}")


def add_config_option(parser: argparse.ArgumentParser, default_files: tuple[str, ...]) -> None:
    """--config FILE, repeatable (later files override earlier ones, as repeated --params-file do)."""
    parser.add_argument("--config", action="append", metavar="FILE",
                        help="ROS 2 params file; repeatable, later ones override earlier (default: "
                             + ", ".join(f"config/{name}" for name in default_files) + ")")
    parser.set_defaults(default_config_files=default_files)


def config_files(args: argparse.Namespace) -> list[str]:
    """The --config files, else the package's defaults for the command; checked here, so that a bad file is
    this command's error rather than a node's crash later."""
    from dino_vla.config import ConfigError, config_dir, load_config

    try:
        files = args.config or [str(config_dir() / name) for name in args.default_config_files]
        load_config(*files)
    except ConfigError as err:
        fail(str(err))
    return files


def load_params(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every node's validated parameters from the command's config files, with --device (where the command
    has it) applied to the nodes that run torch."""
    from dino_vla.config import load_config

    params = load_config(*config_files(args))
    if getattr(args, "device", None):
        for node in params.values():
            if "device" in node:
                node["device"] = args.device
    return params


def add_device_option(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--device", default=default, help="torch device (auto, cpu, cuda, cuda:N); default: "
                        + (default or "each model node's `device` parameter"))


def add_model_options(parser: argparse.ArgumentParser) -> None:
    add_device_option(parser)
    parser.add_argument("--models", choices=MODEL_CHOICES, default="auto",
                        help="auto: pretrained weights where they can be had, else tiny random-weight models with "
                             "a notice; pretrained: fail without weights; tiny: random weights")


def choose_models(args: argparse.Namespace, params: dict[str, dict[str, Any]], stages: tuple[str, ...]):
    """pipeline.choose_models for --models, its notice printed first, where the user sees it."""
    from dino_vla.pipeline import choose_models as choose

    choice = choose(params, args.models, stages)
    if choice.notice:
        print(choice.notice, file=sys.stderr, flush=True)
    return choice


def add_perception_option(parser: argparse.ArgumentParser, extra: tuple[str, ...] = (), extra_help: str = "") -> None:
    parser.add_argument("--perception", choices=PERCEPTION_CHOICES + extra, default="auto",
                        help="models: Grounding DINO + SAM; ground-truth: the simulator's segmentation; auto: the "
                             "models when their pretrained weights can be had" + extra_help)


TRAINED = "trained"
SHIPPED_SEGMENTER = Path(__file__).resolve().parents[1] / "adaptation" / "checkpoints" / "sim-tiny-sam"


def add_trained_options(parser: argparse.ArgumentParser) -> None:
    """--detector, --segmenter, --crop-context and --box-threshold: the models of --perception trained."""
    parser.add_argument("--detector", help="--perception trained: Grounding DINO directory (a finetune-detector "
                        "output)")
    parser.add_argument("--segmenter", help="SAM hub id or directory instead of the config's (e.g. a "
                        "finetune-segmenter output); --perception trained: default the shipped sim-tiny-sam")
    parser.add_argument("--crop-context", type=float, help="the segmenter's crop_context instead of the config's "
                        "(default with --perception trained: what the segmenter was trained with)")
    parser.add_argument("--box-threshold", type=float, help="the detector's box_threshold instead of the config's")


def trained_models(args: argparse.Namespace, params: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Detector and segmenter parameters that replace the config's: the models --detector, --segmenter,
    --crop-context and --box-threshold name; with --perception trained the detector is required, and the segmenter
    defaults to the shipped sim-tiny-sam, cropped as its training recorded (finetune_segmenter.json)."""
    import json

    out: dict[str, dict[str, Any]] = {"detector": {}, "segmenter": {}}
    if args.perception == TRAINED and not args.detector:
        fail("--perception trained needs --detector DIR (a finetune-detector output)")
    if args.detector:
        out["detector"]["model"] = args.detector
    segmenter = args.segmenter or (str(SHIPPED_SEGMENTER) if args.perception == TRAINED else None)
    if segmenter:
        out["segmenter"]["model"] = segmenter
    crop_context = args.crop_context
    record = Path(segmenter or "") / "finetune_segmenter.json"
    if crop_context is None and args.perception == TRAINED and record.is_file():
        crop_context = json.loads(record.read_text())["settings"]["crop_context"]
    if crop_context is not None:
        if not 0 <= crop_context <= 10:
            fail("--crop-context must be in [0, 10]")
        out["segmenter"]["crop_context"] = crop_context
    if args.box_threshold is not None:
        if not 0 <= args.box_threshold <= 1:
            fail("--box-threshold must be in [0, 1]")
        out["detector"]["box_threshold"] = args.box_threshold
    for stage, values in out.items():
        params[stage].update(values)
    return out


def choose_perception(args: argparse.Namespace, params: dict[str, dict[str, Any]]) -> tuple[bool, str | None]:
    """(detector + segmenter models?, banner for the visual record). auto: the models when their
    pretrained weights can be had, else the simulator's ground truth, said in one line up front."""
    from dino_vla.models.loading import how_to_supply, weights_obtainable

    if args.perception in ("models", TRAINED):
        return True, None
    if args.perception == "ground-truth":
        print(f"NOTICE: --perception ground-truth: {GROUND_TRUTH_BANNER.lower()} stands in for Grounding "
              "DINO + SAM", file=sys.stderr, flush=True)
        return False, GROUND_TRUTH_BANNER
    missing = [params[s]["model"] for s in ("detector", "segmenter") if not weights_obtainable(params[s]["model"])]
    if not missing:
        return True, None
    print(f"NOTICE: no pretrained weights for {', '.join(missing)} can be loaded here, so the simulator's "
          f"GROUND-TRUTH segmentation stands in for Grounding DINO + SAM (labelled 'simulator ground truth' in "
          f"every output); {how_to_supply(missing, '<stage>.model in config/perception.yaml')}.",
          file=sys.stderr, flush=True)
    return False, GROUND_TRUTH_BANNER


def image_paths(paths: list[str]) -> list[str]:
    """The image files named, a folder standing for the images in it (sorted); missing paths and empty
    folders are errors."""
    out: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                fail(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {str(path)!r}")
            out += found
        elif not path.exists():
            fail(f"cannot read image {str(path)!r}: no such file or folder")
        else:
            out.append(str(path))
    return out


def load_image(path: str):
    """(H, W, 3) uint8 RGB of any image Pillow reads."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        fail(f"cannot read image {path!r}: {err}")


def domain_choice(text: str) -> str | int:
    """--domain-id: `free`, `env` or a domain id."""
    from dino_vla.dds import parse_domain_id

    if text in ("free", "env"):
        return text
    try:
        return parse_domain_id(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{err} (or 'free' or 'env')") from None


def add_dds_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dds-profile", help="Fast DDS profile (default: config/fastdds_loopback.xml)")
    parser.add_argument("--domain-id", type=domain_choice, default="free", metavar="free|env|N",
                        help="ROS domain of the nodes started here. free (default): one that no graph on this "
                             "host uses, held until the command ends, so only the servers started here answer; "
                             "N (0..232): that domain, e.g. to join a robot's graph; env: $ROS_DOMAIN_ID")


def loopback_environment(args: argparse.Namespace) -> dict[str, str]:
    """The checked loopback DDS environment for the nodes a command starts; exit code 2 (an unsafe DDS
    configuration, as the nodes' own) when the profile is missing or would let DDS leave loopback."""
    from dino_vla.dds import DdsProfileError, loopback_environment as environment

    try:
        return environment(args.dds_profile)
    except DdsProfileError as err:
        refuse_dds(args, str(err))


@contextmanager
def on_ros_domain(args: argparse.Namespace, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """`env` on the ROS domain --domain-id names, said in one line on stderr. A free domain stays claimed
    until the block ends. Exit code 2 when no domain is free or `env` finds no valid $ROS_DOMAIN_ID."""
    from dino_vla.dds import DOMAIN_ENV, DomainError, claim_free_domain, parse_domain_id

    with ExitStack() as held:
        if args.domain_id == "free":
            try:
                domain_id = held.enter_context(claim_free_domain()).domain_id
            except DomainError as err:
                refuse_dds(args, str(err))
            how = "free; --domain-id to choose"
        elif args.domain_id == "env":
            named = os.environ.get(DOMAIN_ENV)
            if named is None:
                refuse_dds(args, f"--domain-id env: {DOMAIN_ENV} is not set")
            try:
                domain_id = parse_domain_id(named)
            except ValueError as err:
                refuse_dds(args, f"--domain-id env: {DOMAIN_ENV}: {err}")
            how = f"{DOMAIN_ENV} from the environment"
        else:
            domain_id, how = args.domain_id, f"--domain-id {args.domain_id}"
        print(f"ROS domain {domain_id} ({how})", file=sys.stderr, flush=True)
        yield {**env, DOMAIN_ENV: str(domain_id)}


def refuse_dds(args: argparse.Namespace, message: str) -> NoReturn:
    print(f"dino-vla {args.command}: {message}", file=sys.stderr)
    raise SystemExit(2)
