"""One rendered frame of a settled simulated table, for the tests that feed node processes by hand; the simulator
standing in for the detector and segmenter models."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dino_vla.sim.mujoco_sim import RenderedFrame, TabletopSim
import mujoco  # noqa: E402  (after mujoco_sim, which chooses MuJoCo's offscreen GL)
from dino_vla.sim.scene import random_scene
from dino_vla.sim.stand_in import ground_truth_perception
from dino_vla.types import CameraIntrinsics, Detections, Masks, RigidTransform


@dataclass(frozen=True)
class SettledFrame:
    frame: RenderedFrame
    detections: Detections        # every visible object, named
    masks: Masks
    intrinsics: CameraIntrinsics
    object_positions: dict[str, np.ndarray]   # base frame, metres
    camera_pose: RigidTransform


def settled_frame(seed: int, workdir: Path, target: str = "cup", distractors: int = 3) -> SettledFrame:
    """A 320x240 render of random_scene(seed, target, distractors) after settling; MuJoCo writes
    MUJOCO_LOG.TXT into the working directory, so it runs in `workdir`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        with TabletopSim(random_scene(seed, target, distractors), width=320, height=240) as sim:
            sim.settle()
            frame = sim.render()
            detections, masks = sim.ground_truth_all(frame)
            return SettledFrame(frame, detections, masks, sim.intrinsics(),
                                {name: pose.translation for name, pose in sim.object_poses().items()},
                                sim.camera_pose())


class SimulatorAsModels:
    """The simulator's ground truth in the places of Grounding DINO and SAM, for tests where random-weight
    models' boxes would mean nothing: PerceptionPipeline(detector=s, segmenter=s). Both answer for the frame
    render() gave last and count their calls."""

    def __init__(self, sim: TabletopSim):
        self.sim = sim
        self.frame: RenderedFrame | None = None
        self.detect_calls = self.segment_calls = 0

    def render(self) -> RenderedFrame:
        self.frame = self.sim.render()
        return self.frame

    def move(self, name: str, shift: tuple[float, float, float]) -> None:
        """Put object `name` `shift` metres (base frame) away, no physics: seen at the next render()."""
        self.sim.data.joint(name).qpos[:3] += shift
        mujoco.mj_forward(self.sim.model, self.sim.data)

    def detect(self, image: np.ndarray, phrases) -> Detections:
        assert np.array_equal(image, self.frame.rgb), "detect() on another image than the frame rendered last"
        self.detect_calls += 1
        return ground_truth_perception(self.sim, self.frame, phrases)[0]

    def segment(self, image: np.ndarray, boxes: np.ndarray) -> Masks:
        """Each box's object (the one whose true box is nearest): its true mask, as SAM prompted with the box."""
        assert np.array_equal(image, self.frame.rgb), "segment() on another image than the frame rendered last"
        self.segment_calls += 1
        truth, masks = self.sim.ground_truth_all(self.frame)
        which = [int(np.argmin(np.abs(truth.boxes - box).sum(axis=1))) for box in boxes]
        return Masks(masks.masks[which].reshape(len(which), *image.shape[:2]), np.ones(len(which), np.float32))
