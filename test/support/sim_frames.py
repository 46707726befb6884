"""One rendered frame of a settled simulated table, for the tests that feed node processes by hand."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dino_vla.sim.mujoco_sim import RenderedFrame, TabletopSim
from dino_vla.sim.scene import random_scene
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
