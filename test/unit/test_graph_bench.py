"""The figures of `dino-vla bench --graph`: outputs matched to camera frames by stamp, latencies, rates and dropped
frames; process memory and CPU from /proc; the in-process pipeline on the same frames; --set parsing and the
arguments of the one-process layout. (The command itself over DDS: test/e2e/test_commands.py.)"""
import os
import time

import numpy as np
import pytest

from dino_vla.config import ConfigError, parse_override
from dino_vla.graph import DETECTOR, FEATURES, PERCEPTION_GRAPH, SEGMENTER, composed_ros_arguments, ros_arguments
from dino_vla.instruction import parse_instruction
from dino_vla.pipeline import STAGES, PerceptionPipeline
from dino_vla.pipeline.graph_benchmark import (StreamRecord, in_process_report, latency_ms, parse_compute_apps,
                                               process_usage, stream_report, usage_report)


def _record() -> StreamRecord:
    """Four frames at 10 Hz (stamps 1..4 s); times in seconds on the probe's clock."""
    record = StreamRecord()
    for i, stamp in enumerate((1_000_000_000, 2_000_000_000, 3_000_000_000, 4_000_000_000)):
        record.published[stamp] = 10.0 + 0.1 * i
    record.seconds = 0.3
    for stamp, t in record.published.items():
        record.arrival("features", stamp, t + 0.020)
    record.arrival("detector", 1_000_000_000, 10.050)
    record.arrival("detector", 3_000_000_000, 10.280)
    record.arrival("segmenter", 1_000_000_000, 10.150)   # 100 ms after its detections, 150 ms after the camera
    record.arrival("segmenter", 1_000_000_000, 10.900)   # a repeat of a stamp: the first arrival counts
    record.arrival("detector", 99, 10.0)                 # a warm-up frame's output: not this stream's
    return record


def test_outputs_are_matched_to_frames_by_stamp_and_frames_without_masks_are_dropped():
    r = stream_report(_record())
    assert r["frames_published"] == 4 and r["seconds"] == 0.3 and r["camera_rate_hz"] == pytest.approx(10.0)
    features, detector, segmenter = (r["stages"][s] for s in ("features", "detector", "segmenter"))
    assert features["outputs"] == 4 and features["frames_without_output"] == 0
    assert features["from_camera"]["p50_ms"] == pytest.approx(20.0)
    assert detector["outputs"] == 2 and detector["frames_without_output"] == 2
    assert detector["outputs_of_other_frames"] == 1
    assert detector["from_camera"]["p50_ms"] == pytest.approx(65.0)   # 50 and 80 ms
    assert detector["from_camera"]["max_ms"] == pytest.approx(80.0)
    assert detector["rate_hz"] == pytest.approx(2 / 0.3, rel=1e-3)
    assert segmenter["outputs"] == 1 and segmenter["from_camera"]["p50_ms"] == pytest.approx(150.0)
    assert segmenter["from_detector"]["p50_ms"] == pytest.approx(100.0)
    masks = r["camera_to_masks"]
    assert masks["masks"] == 1 and masks["dropped_frames"] == 3 and masks["dropped_fraction"] == 0.75
    assert masks["p95_ms"] == pytest.approx(150.0)


def test_a_stream_without_outputs_reports_no_latency_rather_than_zero():
    record = StreamRecord()
    record.published[5] = 1.0
    r = stream_report(record)
    assert r["camera_to_masks"]["p50_ms"] is None and r["camera_to_masks"]["dropped_frames"] == 1
    assert r["camera_rate_hz"] is None and r["stages"]["features"]["rate_hz"] is None
    with pytest.raises(ValueError, match="no frames"):
        stream_report(StreamRecord())


def test_latency_percentiles():
    assert latency_ms([]) == {"p50_ms": None, "p95_ms": None, "max_ms": None}
    stats = latency_ms(list(range(1, 101)))
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p95_ms"] == pytest.approx(95.05)
    assert stats["max_ms"] == 100


def test_process_memory_and_cpu_come_from_proc():
    before = process_usage(os.getpid())
    start = time.process_time()
    while time.process_time() - start < 0.3:   # busy: CPU time must grow
        pass
    after = process_usage(os.getpid())
    assert 10 < after.rss_mib <= after.peak_rss_mib
    assert after.cpu_s - before.cpu_s >= 0.2
    usage = usage_report({"me": before}, {"me": after}, 0.5)["me"]
    assert usage["cpu_percent"] == pytest.approx(100 * (after.cpu_s - before.cpu_s) / 0.5, abs=0.1)


def test_nvidia_smi_compute_apps_are_summed_per_process():
    assert parse_compute_apps("1234, 812\n99, 10\n1234, 100\n") == {1234: 912.0, 99: 10.0}
    assert parse_compute_apps("") == {} and parse_compute_apps("No running processes found") == {}


def test_in_process_pipeline_is_timed_per_stage_on_the_streams_frames(tiny_models):
    params = {stage: {"model": getattr(tiny_models, stage), "device": "cpu", "dtype": "float32",
                      "box_threshold": 0.0, "text_threshold": 0.0, "nms_iou": 0.5, "max_detections": 3}
              for stage in STAGES}
    pipeline = PerceptionPipeline.from_config(params)
    frames = [np.random.default_rng(i).integers(0, 256, (120, 160, 3), np.uint8) for i in range(2)]
    r = in_process_report(pipeline, frames, parse_instruction("pick up the cup"), runs=3, warmup=1)
    assert r["runs"] == 3 and set(r["stages"]) == set(STAGES)
    for stats in (*r["stages"].values(), r["end_to_end"]):
        assert 0 < stats["p50_ms"] <= stats["p95_ms"] <= stats["max_ms"]
    assert r["end_to_end"]["p50_ms"] >= max(s["p50_ms"] for s in r["stages"].values())
    assert r["frames_per_s"] == pytest.approx(1e3 / r["end_to_end"]["p50_ms"], rel=1e-3)
    with pytest.raises(ValueError):
        in_process_report(pipeline, frames, parse_instruction("pick up the cup"), runs=0)


def test_parameter_overrides_are_checked_against_the_schema():
    assert parse_override("detector.box_threshold=0.3", STAGES) == ("detector", "box_threshold", 0.3)
    assert parse_override("segmenter.publish_debug_image=false", STAGES) == ("segmenter", "publish_debug_image",
                                                                            False)
    assert parse_override("detector.instruction=pick up the red cup", STAGES)[2] == "pick up the red cup"
    # a parameter a node does not declare would be ignored by the node without a word: an error here
    with pytest.raises(ConfigError, match="node 'detector' has no parameter 'no_such_parameter'; its parameters:"):
        parse_override("detector.no_such_parameter=true", STAGES)
    with pytest.raises(ConfigError, match="node must be one of features, detector, segmenter"):
        parse_override("pick.dry_run=true", STAGES)
    with pytest.raises(ConfigError, match=r"outside \[0.0, 1.0\]"):
        parse_override("detector.box_threshold=2", STAGES)
    with pytest.raises(ConfigError, match="expected bool"):
        parse_override("features.publish_debug_image=maybe", STAGES)
    for malformed in ("detector", "detector=1", "box_threshold=0.3", ".x=1"):
        with pytest.raises(ConfigError, match="expected NODE.PARAM=VALUE"):
            parse_override(malformed, STAGES)


def test_one_process_holds_the_model_nodes_under_their_own_names():
    args = composed_ros_arguments(PERCEPTION_GRAPH, ["a.yaml", "b.yaml"], namespace="robot",
                                  overrides={"detector": {"instruction": "pick up the cup", "autostart": False},
                                             "segmenter": {"autostart": False}})
    assert not any(a.startswith("__node:=") for a in args)   # it would rename every node of the process
    assert args[:5] == ["--ros-args", "--params-file", "a.yaml", "--params-file", "b.yaml"]
    pairs = list(zip(args[5::2], args[6::2]))
    assert ("-r", "__ns:=/robot") in pairs
    assert pairs.count(("-r", "image:=/camera/color/image_raw")) == 1   # each remapping once
    assert ("-p", 'detector:instruction:="pick up the cup"') in pairs
    assert ("-p", "detector:autostart:=false") in pairs and ("-p", "segmenter:autostart:=false") in pairs
    assert not any(a.startswith("features:") for a in args)
    # one node per process keeps the arguments launch_ros passes
    assert ros_arguments(DETECTOR, ["a.yaml"], overrides={"autostart": False})[:3] == ["--ros-args", "-r",
                                                                                    "__node:=detector"]
    assert {FEATURES, DETECTOR, SEGMENTER} == set(PERCEPTION_GRAPH)
