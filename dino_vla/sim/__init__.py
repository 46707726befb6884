"""Simulated table-top for closed-loop evaluation: scenes (no simulator needed) and the MuJoCo simulator.

The simulator's names load MuJoCo (and pick an offscreen GL backend) only when first used, so scene layouts
can be drawn where MuJoCo is not installed.
"""
from dino_vla.sim.scene import (
    BASE_FRAME, CAMERA_FOVY_DEG, CAMERA_FRAME, CAMERA_POSITION, CAMERA_TARGET, CATALOGUE, COLOURS, GRIPPER_HOME,
    GRIPPER_MAX_OPENING, TABLE_HEIGHT, CatalogueObject, Part, PlacedObject, SceneSpec, catalogue_object,
    default_scene, overlapping_pairs, random_scene, to_mjcf)

_SIMULATOR_NAMES = ("GraspOutcome", "RenderedFrame", "TabletopSim")

__all__ = ["BASE_FRAME", "CAMERA_FOVY_DEG", "CAMERA_FRAME", "CAMERA_POSITION", "CAMERA_TARGET", "CATALOGUE",
           "COLOURS", "GRIPPER_HOME", "GRIPPER_MAX_OPENING", "TABLE_HEIGHT", "CatalogueObject", "Part",
           "PlacedObject", "SceneSpec", "catalogue_object", "default_scene", "overlapping_pairs", "random_scene",
           "to_mjcf", *_SIMULATOR_NAMES]


def __getattr__(name: str):
    if name in _SIMULATOR_NAMES:
        from dino_vla.sim import mujoco_sim
        return getattr(mujoco_sim, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
