"""Detect, then track (pipeline/tracking.py) on rendered MuJoCo frames: the simulator's ground truth stands in for
Grounding DINO and SAM where the boxes must mean something (random-weight models' do not), the tiny models of
the real architectures where what matters is which model runs and that outputs stay the same."""
from __future__ import annotations

import numpy as np
import pytest

from dino_vla import config
from dino_vla.instruction import parse_instruction
from dino_vla.pipeline import PerceptionPipeline
from dino_vla.geometry.boxes import box_iou
from dino_vla.pipeline.tracking import DetectThenTrack, KeyframeTracker, TrackingSettings, move_masks
from dino_vla.sim.mujoco_sim import TabletopSim
from dino_vla.sim.scene import random_scene
from dino_vla.types import DETECTED, TRACKED, Detections, Provenance, tight_box
from support.models import CallCounter
from support.sim_frames import SimulatorAsModels, settled_frame

INSTRUCTION = "pick up the cup next to the block"
FRAME_NS = 100_000_000    # a 10 Hz camera


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """1 for two empty masks (random-weight SAM makes some)."""
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


@pytest.fixture
def table(tmp_path) -> SimulatorAsModels:
    """Seed 1's table (cup, block, box, ball, none hidden behind another) at 320x240, settled."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)   # MuJoCo writes its log into the working directory
        with TabletopSim(random_scene(1, "cup", 3), width=320, height=240) as sim:
            sim.settle()
            yield SimulatorAsModels(sim)


def tracker_of(table: SimulatorAsModels, redetect_every: int = 30, min_confidence: float = 0.5) -> DetectThenTrack:
    return DetectThenTrack(PerceptionPipeline(detector=table, segmenter=table),
                           TrackingSettings(True, redetect_every, min_confidence))


def test_static_scene_is_detected_every_redetect_every_frames_and_tracked_between(table):
    perception = tracker_of(table, redetect_every=4)
    frame = table.render()
    truth_detections = table.detect(frame.rgb, ("cup", "block"))
    truth_masks = table.segment(frame.rgb, truth_detections.boxes)
    table.detect_calls = table.segment_calls = 0
    results = [perception.step(frame.rgb, INSTRUCTION, k * FRAME_NS) for k in range(9)]
    kinds = [r.provenance.kind for r in results]
    assert kinds == [DETECTED, TRACKED, TRACKED, TRACKED] * 2 + [DETECTED]
    assert [r.provenance.frames_since_detection for r in results] == [0, 1, 2, 3] * 2 + [0]
    assert [r.provenance.detection_age_s for r in results] == pytest.approx([0, 0.1, 0.2, 0.3] * 2 + [0])
    # the re-detections find the same boxes: their masks are kept (SAM once on a still scene)
    assert (table.detect_calls, table.segment_calls) == (3, 1)
    assert len(truth_detections) == 2
    for result in results:
        assert result.detections.phrases == truth_detections.phrases
        np.testing.assert_array_equal(result.detections.boxes, truth_detections.boxes)
        assert min(mask_iou(a, b) for a, b in zip(result.masks.masks, truth_masks.masks)) >= 0.9
        assert result.masks.colours == results[0].masks.colours != ()
    assert set(results[1].timings_ms) == {"tracking", "segmenter", "total"}


def test_a_redetection_segments_again_only_when_the_objects_changed(table):
    perception = tracker_of(table, redetect_every=2)
    cup_only = "pick up the cup"
    first = perception.step(table.render().rgb, cup_only, 0)
    perception.step(table.render().rgb, cup_only, FRAME_NS)
    table.move("cup", (0.0005, 0.0, 0.0))   # under a pixel: the same boxes at IoU >= 0.9
    again = perception.step(table.render().rgb, cup_only, 2 * FRAME_NS)
    assert again.provenance.kind == DETECTED and (table.detect_calls, table.segment_calls) == (2, 1)
    assert mask_iou(again.masks.masks[0], first.masks.masks[0]) >= 0.9
    perception.step(table.render().rgb, cup_only, 3 * FRAME_NS)
    table.move("cup", (0.04, 0.0, 0.0))     # 4 cm: the new box no longer overlaps the segmented one enough
    frame = table.render()
    moved = perception.step(frame.rgb, cup_only, 4 * FRAME_NS)
    assert moved.provenance.kind == DETECTED and (table.detect_calls, table.segment_calls) == (3, 2)
    assert mask_iou(moved.masks.masks[0], table.sim.ground_truth("cup", frame)[1].masks[0]) >= 0.95
    # mask_reuse_iou 1: only identical boxes keep their masks
    strict = DetectThenTrack(perception.pipeline, TrackingSettings(True, 2, 0.5, mask_reuse_iou=1.0))
    strict.step(frame.rgb, cup_only, 5 * FRAME_NS)
    strict.step(frame.rgb, cup_only, 6 * FRAME_NS)
    strict.step(frame.rgb, cup_only, 7 * FRAME_NS)
    assert table.segment_calls == 3
    table.move("cup", (0.003, 0.0, 0.0))
    strict.step(table.render().rgb, cup_only, 8 * FRAME_NS)
    strict.step(table.render().rgb, cup_only, 9 * FRAME_NS)
    assert table.segment_calls == 4


def test_a_moving_object_is_followed(table):
    perception = tracker_of(table)
    keyframe = perception.step(table.render().rgb, INSTRUCTION)
    cup = keyframe.detections.phrases.index("cup")
    for _ in range(5):
        table.move("cup", (0.005, 0.003, 0.0))
        frame = table.render()
        result = perception.step(frame.rgb, INSTRUCTION)
        assert result.provenance.kind == TRACKED and result.provenance.confidence >= 0.5
        truth = table.sim.ground_truth("cup", frame)[1].masks[0]
        assert mask_iou(result.masks.masks[cup], truth) >= 0.9
        np.testing.assert_allclose(result.detections.boxes[cup], tight_box(truth), atol=2.0)
    assert table.detect_calls == 1
    # it did move: the detected mask, left where it was, no longer fits
    assert mask_iou(keyframe.masks.masks[cup], truth) < 0.7


def test_a_vanished_object_is_lost_and_detected_again(table):
    perception = tracker_of(table)
    frame = table.render()
    perception.step(frame.rgb, INSTRUCTION)
    assert perception.step(frame.rgb, INSTRUCTION).provenance.kind == TRACKED
    everything, their_masks = table.sim.ground_truth_all(frame)
    tracker = KeyframeTracker(frame.rgb, everything.boxes, their_masks.masks)
    table.move("cup", (0.0, 0.0, -5.0))   # under the floor
    gone = table.render()
    result = perception.step(gone.rgb, INSTRUCTION)
    assert result.provenance == Provenance(DETECTED, 0, result.provenance.stamp_ns, result.provenance.stamp_ns)
    assert table.detect_calls == 2 and result.detections.phrases == ("block",)
    # the confidence that made it detect: the cup's, not the others'
    confidences = dict(zip(everything.phrases, tracker.track(gone.rgb).confidences))
    assert confidences.pop("cup") < 0.5
    assert min(confidences.values()) >= 0.9


def test_an_instruction_change_forces_a_detection(table):
    perception = tracker_of(table)
    frame = table.render()
    kinds = [perception.step(frame.rgb, text).provenance.kind
             for text in (INSTRUCTION, INSTRUCTION, "grab the ball", "grab the ball", INSTRUCTION)]
    assert kinds == [DETECTED, TRACKED, DETECTED, TRACKED, DETECTED]
    assert table.detect_calls == 3


def test_a_lost_track_below_min_confidence_only(table):
    """min_confidence 0 never re-detects early: the vanished cup keeps a box (confidence 0) until
    redetect_every."""
    perception = tracker_of(table, min_confidence=0.0)
    perception.step(table.render().rgb, INSTRUCTION)
    table.move("cup", (0.0, 0.0, -5.0))
    result = perception.step(table.render().rgb, INSTRUCTION)
    assert result.provenance.kind == TRACKED and result.provenance.confidence < 0.5
    assert len(result.detections) == 2 and table.detect_calls == 1


# --------------------------------------------------------------------------- the segmenter's half


def test_masks_of_tracked_detections_are_moved_with_their_boxes(table):
    """What the segmenter node does with the detector node's output: SAM for detected arrays, the detection's
    masks moved for tracked ones of that detection and for any of the same objects (boxes overlapping the
    segmented ones by mask_reuse_iou), SAM again for other boxes of a detection it never saw."""
    perception = tracker_of(table, redetect_every=3)
    frame = table.render()
    detections = table.detect(frame.rgb, ("cup", "block"))
    first = perception.masks(frame.rgb, detections, Provenance(DETECTED, 0, 10, 10))
    assert table.segment_calls == 1

    def shifted(dx: int, dy: int) -> Detections:
        return Detections(detections.boxes + np.array([dx, dy, dx, dy], np.float32), detections.scores,
                          detections.phrases, detections.image_size)

    far = shifted(8, -6)
    assert np.diag(box_iou(detections.boxes, far.boxes)).min() < 0.9   # not the same objects' boxes
    moved = perception.masks(frame.rgb, far, Provenance(TRACKED, 1, 10, 20))
    assert table.segment_calls == 1
    np.testing.assert_array_equal(moved.masks, np.roll(first.masks, (-6, 8), axis=(1, 2)))
    np.testing.assert_array_equal(moved.scores, first.scores)
    perception.masks(frame.rgb, far, Provenance(TRACKED, 2, 10, 30))
    assert table.segment_calls == 1
    # redetect_every frames after SAM ran, boxes that moved away are segmented again
    perception.masks(frame.rgb, far, Provenance(TRACKED, 3, 10, 40))
    assert table.segment_calls == 2
    # tracked boxes of a detection it has no masks of: SAM where they moved, the masks kept where they did not
    perception.masks(frame.rgb, detections, Provenance(TRACKED, 1, 40, 50))
    assert table.segment_calls == 3
    perception.masks(frame.rgb, shifted(0, 1), Provenance(TRACKED, 4, 60, 70))
    perception.masks(frame.rgb, detections, Provenance(DETECTED, 0, 80, 80))
    assert table.segment_calls == 3
    # tracking off: SAM on everything, tracked or not
    perception.settings = TrackingSettings(False)
    perception.masks(frame.rgb, detections, Provenance(TRACKED, 3, 80, 90))
    assert table.segment_calls == 4


def test_move_masks_scales_with_the_box():
    mask = np.zeros((1, 60, 80), bool)
    mask[0, 10:20, 30:40] = True
    box = tight_box(mask[0])
    for to_box in ([30, 10, 40, 20], [32, 15, 52, 35], [0, 0, 5, 5]):
        moved = move_masks(mask, box[None], np.array([to_box], np.float32))[0]
        np.testing.assert_array_equal(tight_box(moved), to_box)
        assert moved.sum() == (to_box[2] - to_box[0]) * (to_box[3] - to_box[1])


# --------------------------------------------------------------------------- with the real (tiny) models


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_models) -> PerceptionPipeline:
    params = {stage: config.validate_params(stage, {"model": getattr(tiny_models, stage), "device": "cpu",
                                                    **({"box_threshold": 0.0} if stage == "detector" else {})})
              for stage in ("features", "detector", "segmenter")}
    return PerceptionPipeline.from_config(params)


@pytest.fixture(scope="module")
def sim_rgb(tmp_path_factory) -> np.ndarray:
    return settled_frame(1, tmp_path_factory.mktemp("sim")).frame.rgb


def test_tracking_off_is_the_per_frame_pipeline(tiny_pipeline, sim_rgb):
    perception = DetectThenTrack(tiny_pipeline, TrackingSettings(enabled=False, redetect_every=5))
    with CallCounter(tiny_pipeline.detector.model) as detector:
        results = [perception.step(sim_rgb, INSTRUCTION, k) for k in range(3)]
    assert detector.calls == 3
    expected = tiny_pipeline.run(sim_rgb, INSTRUCTION)
    for k, result in enumerate(results):
        assert result.provenance == Provenance(DETECTED, 0, k, k)
        assert result.query == expected.query and result.detections.phrases == expected.detections.phrases
        np.testing.assert_array_equal(result.detections.boxes, expected.detections.boxes)
        np.testing.assert_array_equal(result.detections.scores, expected.detections.scores)
        np.testing.assert_array_equal(result.masks.masks, expected.masks.masks)
        np.testing.assert_array_equal(result.masks.scores, expected.masks.scores)
        assert result.masks.colours == expected.masks.colours
        np.testing.assert_array_equal(result.features.patch_tokens, expected.features.patch_tokens)
        assert set(result.timings_ms) == set(expected.timings_ms)


def test_tracked_frames_run_neither_detector_nor_segmenter(tiny_pipeline, sim_rgb):
    """A static scene: the tracked frames give the per-frame pipeline's masks without running either model."""
    with CallCounter(tiny_pipeline.detector.model) as detections, CallCounter(tiny_pipeline.segmenter.model) as sam:
        per_frame = tiny_pipeline.run(sim_rgb, INSTRUCTION)
    assert len(per_frame.detections) > 0
    perception = DetectThenTrack(tiny_pipeline, TrackingSettings(enabled=True, redetect_every=3))
    with CallCounter(tiny_pipeline.detector.model) as detector, \
            CallCounter(tiny_pipeline.segmenter.model) as segmenter, \
            CallCounter(tiny_pipeline.feature_extractor.model) as features:
        results = [perception.step(sim_rgb, INSTRUCTION) for _ in range(6)]
    assert [r.provenance.kind for r in results] == [DETECTED, TRACKED, TRACKED] * 2
    # the second detection finds the same boxes: SAM's masks of the first are kept
    assert (detector.calls, segmenter.calls) == (2 * detections.calls, sam.calls)
    assert features.calls == 6   # the policy's per-frame input is never carried over
    for result in results:
        np.testing.assert_array_equal(result.detections.boxes, per_frame.detections.boxes)
        assert min(mask_iou(a, b) for a, b in zip(result.masks.masks, per_frame.masks.masks)) >= 0.9


def test_an_image_size_change_or_time_going_back_forces_a_detection(tiny_pipeline, sim_rgb):
    perception = DetectThenTrack(tiny_pipeline, TrackingSettings(enabled=True))
    steps = [(sim_rgb, 10), (sim_rgb, 20), (sim_rgb[:200], 30), (sim_rgb[:200], 40), (sim_rgb[:200], 5)]
    kinds = [perception.step(image, INSTRUCTION, stamp).provenance.kind for image, stamp in steps]
    assert kinds == [DETECTED, TRACKED, DETECTED, TRACKED, DETECTED]


# --------------------------------------------------------------------------- settings


def test_settings_come_from_the_node_parameters():
    assert TrackingSettings.from_params(config.defaults("detector")) == TrackingSettings()
    assert TrackingSettings.from_params(config.defaults("segmenter")) == TrackingSettings()
    params = config.validate_params("detector", {"tracking": True, "redetect_every": 5,
                                                 "min_tracking_confidence": 0.7})
    assert TrackingSettings.from_params(params) == TrackingSettings(True, 5, 0.7)
    params = config.validate_params("segmenter", {"tracking": True, "mask_reuse_iou": 0.8})
    assert TrackingSettings.from_params(params) == TrackingSettings(True, mask_reuse_iou=0.8)
    for name in TrackingSettings.PARAMETERS:
        assert name in config.defaults("detector") or name in config.defaults("segmenter")
    with pytest.raises(config.ConfigError, match="redetect_every"):
        config.validate_params("segmenter", {"redetect_every": 0})


@pytest.mark.parametrize("bad", [dict(redetect_every=0), dict(min_confidence=1.5), dict(min_confidence=-0.1),
                                 dict(mask_reuse_iou=0.0), dict(mask_reuse_iou=1.5)])
def test_settings_refuse_impossible_values(bad):
    with pytest.raises(ValueError):
        TrackingSettings(True, **bad)


def test_query_is_parsed_from_text_or_taken_as_given(table):
    perception = tracker_of(table)
    frame = table.render()
    a = perception.step(frame.rgb, INSTRUCTION)
    b = perception.step(frame.rgb, parse_instruction(INSTRUCTION))
    assert a.query == b.query and b.provenance.kind == TRACKED
