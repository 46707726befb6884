"""Masks + depth -> 3D objects, and top-down grasps of them. ROS-free and torch-free."""
from dino_vla.geometry.depth import DepthFrame, depth_to_metres
from dino_vla.geometry.grasp_planner import REFUSAL_REASONS, GraspPlanner, GraspRefused, GripperSpec, Workspace
from dino_vla.geometry.localise import (LocaliserSettings, NoPointsError, align_to_gravity, gravity_aligned_box,
                                        localise, principal_box)

__all__ = ["DepthFrame", "LocaliserSettings", "NoPointsError", "align_to_gravity", "depth_to_metres",
           "gravity_aligned_box", "localise", "principal_box", "REFUSAL_REASONS", "GraspPlanner", "GraspRefused",
           "GripperSpec", "Workspace"]
