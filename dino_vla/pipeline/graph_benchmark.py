"""What `dino-vla bench --graph` computes from a camera stream sent through the node graph: frames matched to
each stage's outputs by header stamp, per-stage latency percentiles, output rates and dropped frames, the node
processes' memory and CPU, and the in-process pipeline timed on the same frames for comparison. ROS-free: the
ros/graph_bench.py probe records the stamps and times, this module turns them into the report."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dino_vla.instruction import GroundingQuery

# each stage's output topic and the stage whose output it consumes (None: the camera image)
GRAPH_OUTPUTS = {"features": ("features", None), "detector": ("detections", None),
                 "segmenter": ("masks", "detector")}


@dataclass
class StreamRecord:
    """The probe's raw observations, all times from one monotonic clock of the probe's process: when each
    camera frame (keyed by its header stamp, ns) was published and when each stage's output for it arrived."""

    published: dict[int, float] = field(default_factory=dict)
    arrived: dict[str, dict[int, float]] = field(default_factory=lambda: {s: {} for s in GRAPH_OUTPUTS})
    unmatched: dict[str, int] = field(default_factory=lambda: {s: 0 for s in GRAPH_OUTPUTS})
    seconds: float = 0.0   # from the first to the last frame published

    def arrival(self, stage: str, stamp_ns: int, now: float) -> None:
        """An output of `stage` for the frame stamped `stamp_ns` arrived at `now`. Outputs for frames this
        stream did not publish (the warm-up's) are counted apart; a repeat of a stamp keeps the first arrival."""
        if stamp_ns not in self.published:
            self.unmatched[stage] += 1
        else:
            self.arrived[stage].setdefault(stamp_ns, now)


def latency_ms(times_ms) -> dict:
    """p50, p95 and max of a list of milliseconds (None for each when empty)."""
    if len(times_ms) == 0:
        return {"p50_ms": None, "p95_ms": None, "max_ms": None}
    return {"p50_ms": round(float(np.percentile(times_ms, 50)), 3),
            "p95_ms": round(float(np.percentile(times_ms, 95)), 3), "max_ms": round(float(np.max(times_ms)), 3)}


def stream_report(record: StreamRecord) -> dict:
    """Per stage: outputs received for the stream's frames, their rate over the stream's duration, frames
    without an output, latency from the camera frame's publication to the output's arrival, and (segmenter)
    from its input's arrival (the detections) to its own: the stage's share. `camera_to_masks` is the
    segmenter's from-camera figure with the frames that never produced masks called dropped."""
    frames = len(record.published)
    if frames == 0:
        raise ValueError("no frames were published")
    seconds = max(record.seconds, 1e-9)
    stages = {}
    for stage, (topic, source) in GRAPH_OUTPUTS.items():
        got = record.arrived[stage]
        entry = {"topic": topic, "outputs": len(got), "rate_hz": round(len(got) / seconds, 3) if frames > 1
                 else None, "frames_without_output": frames - len(got),
                 "outputs_of_other_frames": record.unmatched[stage],
                 "from_camera": latency_ms([(t - record.published[s]) * 1e3 for s, t in got.items()])}
        if source is not None:
            before = record.arrived[source]
            entry[f"from_{source}"] = latency_ms([(t - before[s]) * 1e3 for s, t in got.items() if s in before])
        stages[stage] = entry
    masks = stages["segmenter"]
    return {"frames_published": frames, "seconds": round(record.seconds, 3),
            "camera_rate_hz": round((frames - 1) / seconds, 3) if frames > 1 else None, "stages": stages,
            "camera_to_masks": {**masks["from_camera"], "masks": masks["outputs"],
                                "dropped_frames": masks["frames_without_output"],
                                "dropped_fraction": round(masks["frames_without_output"] / frames, 4)}}


def in_process_report(pipeline, frames: list[np.ndarray], query: GroundingQuery, runs: int, warmup: int = 1
                      ) -> dict:
    """The one PerceptionPipeline run frame after frame in this process, `runs` frames cycling through
    `frames` after `warmup` untimed ones: each stage's and the whole run's latency, and frames/s."""
    if runs < 1 or warmup < 0 or not frames:
        raise ValueError("in-process timing needs frames, runs >= 1 and warmup >= 0")
    for i in range(warmup):
        pipeline.run(frames[i % len(frames)], query)
    timings: dict[str, list[float]] = {}
    for i in range(runs):
        for stage, ms in pipeline.run(frames[i % len(frames)], query).timings_ms.items():
            timings.setdefault(stage, []).append(ms)
    total = timings.pop("total")
    p50 = float(np.percentile(total, 50))
    return {"runs": runs, "stages": {stage: latency_ms(ms) for stage, ms in timings.items()},
            "end_to_end": latency_ms(total), "frames_per_s": round(1e3 / p50, 3) if p50 > 0 else None}


@dataclass(frozen=True)
class ProcessUsage:
    """One process's memory (resident now and its peak) and CPU seconds (user + system) so far, from /proc."""

    rss_mib: float
    peak_rss_mib: float
    cpu_s: float


def process_usage(pid: int) -> ProcessUsage:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    kib = {name: float(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}
    # /proc/PID/stat: the command name in parentheses may hold spaces, so count the fields after its ")"
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return ProcessUsage(round(kib["VmRSS"] / 1024, 1), round(kib["VmHWM"] / 1024, 1),
                        (int(after_name[11]) + int(after_name[12])) / ticks)   # utime, stime


def usage_report(before: dict[str, ProcessUsage], after: dict[str, ProcessUsage], seconds: float) -> dict:
    """Per node process: RSS at the end, peak RSS, and CPU use while the stream ran (100 = one core busy)."""
    return {name: {"rss_mib": end.rss_mib, "peak_rss_mib": end.peak_rss_mib,
                   "cpu_percent": round(100 * (end.cpu_s - before[name].cpu_s) / max(seconds, 1e-9), 1)}
            for name, end in after.items() if name in before}


def cuda_memory_by_pid() -> dict[int, float]:
    """MiB of GPU memory each process holds, as nvidia-smi reports it (torch in one process cannot see the
    others'); empty where there is no nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_compute_apps(out)


def parse_compute_apps(text: str) -> dict[int, float]:
    """nvidia-smi's `pid, used_memory` CSV lines (MiB) as {pid: MiB}."""
    usage: dict[int, float] = {}
    for line in text.strip().splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip().isdigit() and mib.strip().replace(".", "", 1).isdigit():
            usage[int(pid)] = usage.get(int(pid), 0.0) + float(mib)
    return usage


def report_lines(r: dict) -> list[str]:
    s = r["stream"]
    lines = [f"graph: {r['layout']} | {s['frames_published']} frames in {s['seconds']:.1f} s "
             f"({s['camera_rate_hz']} Hz asked {r['rate_hz']}) | {r['source']} | device {r['device']}",
             f"weights: {r['weights']}",
             f"\n{'stage':<10} | {'outputs':>7} | {'rate Hz':>8} | {'no output':>9} | {'p50 ms':>9} | "
             f"{'p95 ms':>9} | from input p50/p95 ms"]
    lines.append("-" * 90)
    for stage, v in s["stages"].items():
        own = next((v[k] for k in v if k.startswith("from_") and k != "from_camera"), None)
        lat = v["from_camera"]
        lines.append(f"{stage:<10} | {v['outputs']:>7} | {v['rate_hz'] or 0:>8.2f} | {v['frames_without_output']:>9} | "
                     f"{_ms(lat['p50_ms'])} | {_ms(lat['p95_ms'])} | "
                     + (f"{_ms(own['p50_ms']).strip()} / {_ms(own['p95_ms']).strip()}" if own else "-"))
    c = s["camera_to_masks"]
    lines.append(f"\ncamera -> masks: p50 {_ms(c['p50_ms']).strip()} ms, p95 {_ms(c['p95_ms']).strip()} ms, "
                 f"{c['masks']} masks, {c['dropped_frames']} of {s['frames_published']} frames dropped")
    for name, p in r["processes"].items():
        cuda = f", CUDA {p['cuda_mib']:.0f} MiB" if p.get("cuda_mib") is not None else ""
        lines.append(f"process {name:<12} RSS {p['rss_mib']:.0f} MiB (peak {p['peak_rss_mib']:.0f}), "
                     f"CPU {p['cpu_percent']:.0f} %{cuda}")
    if r.get("in_process"):
        ip = r["in_process"]
        stages = ", ".join(f"{k} {_ms(v['p50_ms']).strip()}" for k, v in ip["stages"].items())
        lines.append(f"\nin-process pipeline, {ip['runs']} frames: end to end p50 "
                     f"{_ms(ip['end_to_end']['p50_ms']).strip()} ms, p95 {_ms(ip['end_to_end']['p95_ms']).strip()} ms "
                     f"({ip['frames_per_s']} frames/s); p50 ms per stage: {stages}")
    return lines


def _ms(value: float | None) -> str:
    return f"{value:>9.1f}" if value is not None else f"{'-':>9}"
