"""The probe of `dino-vla bench --graph`: one rclpy node that plays a camera stream into the running perception
graph at a fixed rate and notes when each stage's output for each frame comes back (matched by header stamp).
The figures are made from its StreamRecord by pipeline/graph_benchmark.py."""
from __future__ import annotations

import os
import time
from typing import Any, TextIO

import numpy as np
import rclpy
import torch
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image

from dino_vla.graph import PERCEPTION_GRAPH, CameraTopics
from dino_vla.msg import DetectionArray, DinoFeatures, SegmentationMasks
from dino_vla.pipeline.graph_benchmark import (GRAPH_OUTPUTS, StreamRecord, cuda_memory_by_pid, process_usage,
                                               stream_report, usage_report)
from dino_vla.ros.conversions import numpy_to_image
from dino_vla.ros.launcher import COMPOSED_PROCESS, start_graph
from dino_vla.ros.messages import stamp_ns
from dino_vla.ros.node_base import camera_qos

_TYPES = {"features": DinoFeatures, "detections": DetectionArray, "masks": SegmentationMasks}


class CameraStreamProbe:
    """Publishes `frames` (cycled) on `image_topic` and records the outputs of the features, detector and
    segmenter nodes. The nodes publish reliably with depth 10; the probe's subscriptions keep 100 so that none
    is lost to the probe itself while it is busy publishing."""

    def __init__(self, frames: list[np.ndarray], image_topic: str, reliability: str = "best_effort",
                 frame_id: str = "camera_color_optical_frame"):
        if not frames:
            raise ValueError("the camera stream needs at least one frame")
        self.node = rclpy.create_node("dino_vla_graph_bench")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        # frames are converted once: the stream measures the graph, not the probe's conversions
        self.messages = [numpy_to_image(frame, "rgb8") for frame in frames]
        for msg in self.messages:
            msg.header.frame_id = frame_id
        self.publisher = self.node.create_publisher(Image, image_topic, camera_qos(reliability))
        self.record = StreamRecord()
        self._warm_up_answers: dict[int, set[str]] = {}
        self.subscriptions = {stage: self.node.create_subscription(
            _TYPES[topic], topic, lambda msg, stage=stage: self._on_output(stage, msg), QoSProfile(depth=100))
            for stage, (topic, _) in GRAPH_OUTPUTS.items()}

    def _on_output(self, stage: str, msg) -> None:
        now, stamp = time.monotonic(), stamp_ns(msg.header)
        if stamp in self._warm_up_answers:
            self._warm_up_answers[stamp].add(stage)
        self.record.arrival(stage, stamp, now)

    def _spin_until(self, deadline: float, done=lambda: False) -> bool:
        while time.monotonic() < deadline:
            if done():
                return True
            self.executor.spin_once(timeout_sec=min(0.05, max(0.0, deadline - time.monotonic())))
        return done()

    def _publish(self, index: int) -> int:
        msg = self.messages[index % len(self.messages)]
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.publisher.publish(msg)
        return stamp_ns(msg.header)

    def wait_for_graph(self, image_subscribers: int, timeout_s: float = 30.0) -> None:
        """Until every node's image subscription and every output's publisher are matched (DDS discovery)."""
        def matched() -> bool:
            return (self.publisher.get_subscription_count() >= image_subscribers
                    and all(s.get_publisher_count() > 0 for s in self.subscriptions.values()))
        if not self._spin_until(time.monotonic() + timeout_s, matched):
            raise RuntimeError(f"the graph's topics were not discovered in {timeout_s:.0f} s "
                               f"({self.publisher.get_subscription_count()} image subscribers of "
                               f"{image_subscribers})")

    def warm_up(self, timeout_s: float = 300.0, patience_s: float = 5.0) -> float:
        """Frames that are not part of the stream, one at a time, until one has been answered by every stage
        (the first calls pay for lazy initialisation); a frame not answered within the patience (dropped, or
        still in work) is followed by another, and the patience doubles from `patience_s`: a graph slower than
        it per frame (real sizes on a CPU) would otherwise never answer the latest frame in time. Once the
        latest is answered no older one is in flight: the stream starts on an idle graph. Returns the seconds
        that took."""
        start = time.monotonic()
        deadline = start + timeout_s
        while time.monotonic() < deadline:
            stamp = self._publish(0)
            self._warm_up_answers[stamp] = set()
            if self._spin_until(min(deadline, time.monotonic() + patience_s),
                                lambda: len(self._warm_up_answers[stamp]) == len(GRAPH_OUTPUTS)):
                return time.monotonic() - start
            patience_s *= 2
        silent = set(GRAPH_OUTPUTS) - set().union(*self._warm_up_answers.values())
        raise RuntimeError(f"warm-up: in {timeout_s:.0f} s no frame was answered by every stage"
                           + (f" (nothing at all from {', '.join(sorted(silent))})" if silent else ""))

    def stream(self, rate_hz: float, seconds: float, drain_s: float) -> StreamRecord:
        """Publish at `rate_hz` for `seconds` on a fixed schedule (a late publish does not shift the next ones),
        then wait up to `drain_s` for the outputs of the last frames."""
        frames = max(1, int(round(rate_hz * seconds)))
        start = time.monotonic()
        for i in range(frames):
            self._spin_until(start + i / rate_hz)
            sent = time.monotonic()   # before publish(): serialising the image is part of the path measured
            self.record.published[self._publish(i)] = sent
        published = list(self.record.published.values())
        self.record.seconds = published[-1] - published[0]
        self._spin_until(time.monotonic() + drain_s,
                         lambda: len(self.record.arrived["segmenter"]) == len(self.record.published)
                         and len(self.record.arrived["features"]) == len(self.record.published))
        return self.record

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def bench_graph(frames: list[np.ndarray], params_files: list[str], env: dict[str, str], log: TextIO, *,
                rate_hz: float, seconds: float, instruction: str, models: dict[str, str],
                node_params: dict[str, dict[str, Any]], device: str | None = None, one_process: bool = False,
                camera: CameraTopics = CameraTopics(), reliability: str = "best_effort",
                warm_up_timeout_s: float = 600.0) -> dict:
    """Start the features, detector and segmenter nodes (start_graph, on the DDS environment `env`), warm them
    up, play `frames` into them at `rate_hz` for `seconds`, stop them, and report: the stream's per-stage
    figures (graph_benchmark.stream_report) and each node process's memory and CPU use while it ran.
    RuntimeError when the graph failed (the nodes' output is in `log`)."""
    graph = start_graph(params_files, env, camera=camera, instruction=instruction, device=device, models=models,
                        node_params=node_params, stdout=log, stderr=log, one_process=one_process)
    os.environ.update(env)   # this process's own participant must use the same DDS settings
    rclpy.init()
    probe = None
    try:
        probe = CameraStreamProbe(frames, camera.image, reliability)
        probe.wait_for_graph(image_subscribers=len(PERCEPTION_GRAPH))
        warm_up_s = probe.warm_up(warm_up_timeout_s)
        pids = {name: proc.pid for name, proc in graph.processes.items()}
        before = {name: process_usage(pid) for name, pid in pids.items()}
        # after the last frame the nodes hold at most one frame each in work and one queued (depth 1)
        record = probe.stream(rate_hz, seconds, drain_s=max(2.0, 3 * warm_up_s))
        failed = graph.failed()
        if failed:
            raise RuntimeError(f"node process {failed[0]} exited with code {failed[1]} during the stream")
        usage = usage_report(before, {name: process_usage(pid) for name, pid in pids.items()}, record.seconds)
        if torch.cuda.is_available():   # nvidia-smi names no process that holds no GPU memory: None for those
            held = cuda_memory_by_pid()
            for name, pid in pids.items():
                usage[name]["cuda_mib"] = held.get(pid)
    finally:
        if probe is not None:
            probe.close()
        rclpy.try_shutdown()
        graph.stop()
    return {"layout": f"one process ({COMPOSED_PROCESS})" if one_process else "one process per node",
            "warm_up_s": round(warm_up_s, 3), "stream": stream_report(record), "processes": usage}

