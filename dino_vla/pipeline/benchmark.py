"""What `dino-vla bench` measures: per-stage and end-to-end latency of the one PerceptionPipeline on a real
photo, plus the segmenter's speed claim (one image encoding shared by all boxes) against a naive once-per-box
baseline measured in the same run."""
from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from dino_vla.instruction import GroundingQuery
from dino_vla.pipeline import STAGES, PerceptionPipeline
from dino_vla.types import Detections

NAIVE = "segmenter_per_box_naive"
TIMED_STAGES = ("features", "detector", "segmenter", "end_to_end")
_NEEDS = {"features": ("features",), "detector": ("detector",), "segmenter": ("detector", "segmenter"),
          "end_to_end": STAGES}


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


def benchmark_pipeline(pipeline: PerceptionPipeline, image: np.ndarray, image_name: str, query: GroundingQuery,
                       runs: int = 20, warmup: int = 2, boxes: int = 3, stages: tuple[str, ...] = TIMED_STAGES,
                       weights: str = "pretrained") -> dict:
    """Median, p95 and frames/s of each of `stages` (TIMED_STAGES; `segmenter` also times the naive
    once-per-box baseline) on one image, with the machine, devices, dtypes and model sizes.
    `weights` says what the weights are, for the report."""
    unknown = set(stages) - set(TIMED_STAGES)
    if unknown or not stages:
        raise ValueError(f"stages must be among {', '.join(TIMED_STAGES)}, got {', '.join(stages) or 'none'}")
    if runs < 1 or warmup < 0 or boxes < 1:
        raise ValueError("runs and boxes must be >= 1, warmup >= 0")
    adapters = {stage: adapter for stage, adapter in (("features", pipeline.feature_extractor),
                                                      ("detector", pipeline.detector),
                                                      ("segmenter", pipeline.segmenter)) if adapter is not None}
    missing = sorted(set(models_for(stages)) - set(adapters))
    if missing:
        raise ValueError(f"timing {', '.join(stages)} needs the {', '.join(missing)} model(s) in the pipeline")
    devices = sorted({str(a.model.device) for a in adapters.values()})
    cuda = [torch.device(d) for d in devices if d.startswith("cuda")]

    def sync():
        for dev in cuda:
            torch.cuda.synchronize(dev)

    for dev in cuda:
        torch.cuda.reset_peak_memory_stats(dev)

    cases = {}
    if "features" in stages:
        cases["features"] = lambda: pipeline.extract_features(image)
    if "detector" in stages:
        cases["detector"] = lambda: pipeline.detect(image, query)
    found = pipeline.detect(image, query) if pipeline.detector is not None else None
    if "segmenter" in stages:
        fixed = _fixed_boxes(found, boxes, query.target)
        singles = [Detections(fixed.boxes[i:i + 1], fixed.scores[i:i + 1], fixed.phrases[i:i + 1], fixed.image_size)
                   for i in range(len(fixed))]
        cases["segmenter"] = lambda: pipeline.segment(image, fixed)
        cases[NAIVE] = lambda: [pipeline.segment(image, one) for one in singles]  # re-encodes the image per box
    if "end_to_end" in stages:
        cases["end_to_end"] = lambda: pipeline.run(image, query)
    results = {name: _stats(_timed(fn, runs, warmup, sync)) for name, fn in cases.items()}
    ratio = (round(results[NAIVE]["median_ms"] / results["segmenter"]["median_ms"], 3)
             if "segmenter" in results else None)
    return {
        "machine": {"platform": platform.platform(), "cpu": _cpu_model(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "devices": devices,
        "gpus": [torch.cuda.get_device_name(d) for d in cuda],
        "dtypes": sorted({str(a.model.dtype).replace("torch.", "") for a in adapters.values()}),
        "weights": weights, "random_weights": weights != "pretrained",
        "models": {stage: {"source": a.name,
                           "params_m": round(sum(p.numel() for p in a.model.parameters()) / 1e6, 3),
                           "attention": a.model.config._attn_implementation}
                   for stage, a in adapters.items()},
        "image": {"source": image_name, "height": int(image.shape[0]), "width": int(image.shape[1])},
        "instruction": query.instruction, "segmenter_boxes": boxes if "segmenter" in stages else None,
        # end_to_end segments the detector's boxes, not the fixed segmenter_boxes
        "detector_boxes": len(found) if found is not None else None,
        "warmup": warmup, "stages": results, "segmenter_naive_over_ours": ratio,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # KiB on Linux
        "cuda_max_allocated_mib": {str(d): round(torch.cuda.max_memory_allocated(d) / 2**20, 1)
                                   for d in cuda} or None,
    }


def models_for(stages: tuple[str, ...]) -> tuple[str, ...]:
    """The pipeline stages whose models timing `stages` needs (the segmenter is given the detector's boxes)."""
    needed = set()
    for stage in stages:
        needed |= set(_NEEDS[stage])
    return tuple(s for s in STAGES if s in needed)


def report_lines(r: dict) -> list[str]:
    m = r["machine"]
    gpus = f" ({', '.join(r['gpus'])})" if r["gpus"] else ""
    lines = [f"machine: {m['platform']} | {m['cpu']} | {m['cores']} cores | python {m['python']}",
             f"torch {r['torch']} | {r['torch_threads']} threads | device {', '.join(r['devices'])}{gpus} "
             f"| dtype {', '.join(r['dtypes'])}",
             f"weights: {r['weights']}"]
    lines += [f"  {stage:<10} {v['params_m']:>9.3f} M params  {v['attention']:<6} attention  {v['source']}"
              for stage, v in r["models"].items()]
    img = r["image"]
    boxes = [f"segmenter gets {r['segmenter_boxes']} boxes"] if r["segmenter_boxes"] is not None else []
    if "end_to_end" in r["stages"]:
        boxes.append(f"end_to_end gets the detector's {r['detector_boxes']}")
    lines.append(" | ".join([f"image: {img['source']} {img['width']}x{img['height']}",
                             f"instruction {r['instruction']!r}", *boxes, f"warmup {r['warmup']}"]))
    lines.append(f"\n{'stage':<24} | {'median ms':>10} | {'p95 ms':>10} | {'fps':>9} | {'runs':>5}")
    lines.append("-" * 71)
    lines += [f"{name:<24} | {s['median_ms']:>10.2f} | {s['p95_ms']:>10.2f} | {s['fps']:>9.2f} | "
              f"{s['runs']:>5}" for name, s in r["stages"].items()]
    if r["segmenter_naive_over_ours"] is not None:
        lines.append(f"\nsegmenter, {r['segmenter_boxes']} boxes: once per box (naive) / one shared encoding "
                     f"(ours) = {r['segmenter_naive_over_ours']:.2f}x (medians)")
    cuda = r["cuda_max_allocated_mib"]
    lines.append(f"peak RSS {r['peak_rss_mib']:.1f} MiB"
                 + (" | CUDA max allocated " + ", ".join(f"{d} {v:.1f} MiB" for d, v in cuda.items())
                    if cuda else ""))
    return lines
