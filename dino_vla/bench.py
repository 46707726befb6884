"""`dino-vla bench`: per-stage and end-to-end latency of the one PerceptionPipeline on a real photo, plus
the segmenter's speed claim (one image encoding shared by all boxes) against a naive once-per-box
baseline measured in the same run."""
from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from dino_vla.cli import _choose, _config, _load_image
from dino_vla.types import Detections

NAIVE = "segmenter_per_box_naive"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _stats(times_ms: list[float]) -> dict:
    median = float(np.median(times_ms))
    return {"median_ms": round(median, 3), "p95_ms": round(float(np.percentile(times_ms, 95)), 3),
            "fps": round(1e3 / median, 2), "runs": len(times_ms)}


def _timed(fn, runs: int, warmup: int, sync) -> list[float]:
    for _ in range(warmup):  # first calls pay for lazy init, allocator growth and kernel selection
        fn()
    times = []
    for _ in range(runs):
        sync()  # CUDA calls return before the GPU is done: without this we would time the queueing
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _fixed_boxes(found: Detections, n: int, label: str) -> Detections:
    """Exactly n boxes: the detector's best, then deterministic ones spread along the image diagonal, so
    the segmenter's cost does not depend on what (random-weight) detectors happen to find."""
    h, w = found.image_size
    boxes = list(found.boxes[:n])
    missing = n - len(boxes)
    for i in range(missing):
        f = (i + 1) / (missing + 1)
        cx, cy = f * w, f * h
        boxes.append(np.array([max(0, cx - w / 8), max(0, cy - h / 8), min(w, cx + w / 8),
                               min(h, cy + h / 8)], np.float32))
    return Detections(np.stack(boxes).astype(np.float32), np.ones(n, np.float32), (label,) * n, (h, w))


def run_benchmark(args) -> int:
    from dino_vla.instruction import InstructionError, parse_instruction
    from dino_vla.models.loading import ModelUnavailableError
    from dino_vla.models.random_init import build_random_models
    from dino_vla.pipeline import STAGES, PerceptionPipeline

    if args.runs < 1 or args.warmup < 0 or args.boxes < 1 or (args.threads is not None and args.threads < 1):
        raise SystemExit("dino-vla: --runs, --boxes and --threads must be >= 1, --warmup >= 0")
    try:
        query = parse_instruction(args.instruction)
    except InstructionError as err:
        raise SystemExit(f"dino-vla: {err}") from None
    if args.image:
        image, image_name = _load_image(args.image), args.image
    else:
        from skimage.data import coffee

        image, image_name = np.ascontiguousarray(coffee()), "skimage.data.coffee()"
    if args.threads:
        torch.set_num_threads(args.threads)

    params = _config(args)  # applies --device
    if args.real_size:
        sources = build_random_models("real")
        params = {stage: dict(p, model=getattr(sources, stage)) for stage, p in params.items()}
        weights = "RANDOM weights at the REAL sizes: measures cost only, outputs are meaningless"
    else:
        choice = _choose(args, params, STAGES)
        params = choice.params
        weights = "RANDOM weights (tiny): outputs are meaningless" if choice.random_weights else "pretrained"
    try:
        pipeline = PerceptionPipeline.from_config(params)
    except ModelUnavailableError as err:
        raise SystemExit(f"dino-vla: {err}") from None

    adapters = {"features": pipeline.feature_extractor, "detector": pipeline.detector,
                "segmenter": pipeline.segmenter}
    devices = sorted({str(a.model.device) for a in adapters.values()})
    cuda = [torch.device(d) for d in devices if d.startswith("cuda")]

    def sync():
        for dev in cuda:
            torch.cuda.synchronize(dev)

    for dev in cuda:
        torch.cuda.reset_peak_memory_stats(dev)

    found = pipeline.detect(image, query)
    boxes = _fixed_boxes(found, args.boxes, query.target)
    singles = [Detections(boxes.boxes[i:i + 1], boxes.scores[i:i + 1], boxes.phrases[i:i + 1],
                          boxes.image_size) for i in range(len(boxes))]
    cases = {
        "features": lambda: pipeline.extract_features(image),
        "detector": lambda: pipeline.detect(image, query),
        "segmenter": lambda: pipeline.segment(image, boxes),
        NAIVE: lambda: [pipeline.segment(image, one) for one in singles],  # re-encodes the image per box
        "end_to_end": lambda: pipeline.run(image, query),
    }
    results = {name: _stats(_timed(fn, args.runs, args.warmup, sync)) for name, fn in cases.items()}
    ratio = results[NAIVE]["median_ms"] / results["segmenter"]["median_ms"]

    report = {
        "machine": {"platform": platform.platform(), "cpu": _cpu_model(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "devices": devices,
        "gpus": [torch.cuda.get_device_name(d) for d in cuda],
        "dtypes": sorted({str(a.model.dtype).replace("torch.", "") for a in adapters.values()}),
        "weights": weights, "random_weights": weights != "pretrained",
        "models": {stage: {"source": a.name,
                           "params_m": round(sum(p.numel() for p in a.model.parameters()) / 1e6, 3)}
                   for stage, a in adapters.items()},
        "image": {"source": image_name, "height": int(image.shape[0]), "width": int(image.shape[1])},
        "instruction": args.instruction, "segmenter_boxes": args.boxes,
        "detector_boxes": len(found),  # end_to_end segments these, not the fixed segmenter_boxes
        "warmup": args.warmup, "stages": results, "segmenter_naive_over_ours": round(ratio, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # KiB on Linux
        "cuda_max_allocated_mib": {str(d): round(torch.cuda.max_memory_allocated(d) / 2**20, 1)
                                   for d in cuda} or None,
    }
    _print(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _print(r: dict) -> None:
    m = r["machine"]
    gpus = f" ({', '.join(r['gpus'])})" if r["gpus"] else ""
    lines = [f"machine: {m['platform']} | {m['cpu']} | {m['cores']} cores | python {m['python']}",
             f"torch {r['torch']} | {r['torch_threads']} threads | device {', '.join(r['devices'])}{gpus} "
             f"| dtype {', '.join(r['dtypes'])}",
             f"weights: {r['weights']}"]
    lines += [f"  {stage:<10} {v['params_m']:>9.3f} M params  {v['source']}"
              for stage, v in r["models"].items()]
    img = r["image"]
    lines.append(f"image: {img['source']} {img['width']}x{img['height']} | "
                 f"instruction {r['instruction']!r} | segmenter gets {r['segmenter_boxes']} boxes; "
                 f"end_to_end gets the detector's {r['detector_boxes']} | warmup {r['warmup']}")
    lines.append(f"\n{'stage':<24} | {'median ms':>10} | {'p95 ms':>10} | {'fps':>9} | {'runs':>5}")
    lines.append("-" * 71)
    lines += [f"{name:<24} | {s['median_ms']:>10.2f} | {s['p95_ms']:>10.2f} | {s['fps']:>9.2f} | "
              f"{s['runs']:>5}" for name, s in r["stages"].items()]
    lines.append(f"\nsegmenter, {r['segmenter_boxes']} boxes: once per box (naive) / one shared encoding "
                 f"(ours) = {r['segmenter_naive_over_ours']:.2f}x (medians)")
    cuda = r["cuda_max_allocated_mib"]
    lines.append(f"peak RSS {r['peak_rss_mib']:.1f} MiB"
                 + (" | CUDA max allocated " + ", ".join(f"{d} {v:.1f} MiB" for d, v in cuda.items())
                    if cuda else ""))
    print("\n".join(lines), flush=True)
