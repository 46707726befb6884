"""ros2 launch dino_vla pick.launch.py instruction:="pick up the cup" [grasp_source:=policy]

rviz:=true also starts RViz 2 with config/dino_vla.rviz (camera and debug images, markers, object cloud,
grasp poses; launch_support.rviz_node).

Starts the pick graph of dino_vla/graph.py on a real robot's RGB-D camera: detector + segmenter (masks of
what the instruction names), localiser (3D objects, clouds, RViz markers) and pick (the Pick action). With
grasp_source:=policy the grasps come from the VLA policy node instead of the geometric planner, and the
DINOv2 features node runs the backbone of the policy's checkpoint (policy_config). With instruction:= the
pick node picks it once at start-up; send more goals to the `pick` action. Grasp commands go out on
`grasp_command` marked dry_run unless pick.dry_run is set false in the params file.
`dino-vla sim-pick` starts the same description where ros2 launch does not exist.
DDS: this file uses the site's own DDS settings; it does not impose the loopback profile.
"""
import os

from ament_index_python.packages import get_package_share_directory

from dino_vla.graph import CameraTopics, parameter_overrides, pick_graph_and_params
from dino_vla.launch_support import launch_description, node_actions

CONFIG = os.path.join(get_package_share_directory("dino_vla"), "config")
CAMERA = CameraTopics()
ARGUMENTS = {
    "instruction": ("", "picked once at start-up, e.g. 'pick up the cup' (empty: wait for goals)"),
    "perception_config": (os.path.join(CONFIG, "perception.yaml"), "params file of the model nodes"),
    "pick_config": (os.path.join(CONFIG, "pick.yaml"), "params file of the localiser and pick nodes "
                                                       "(camera extrinsic, gripper, workspace, dry_run)"),
    "policy_config": (os.path.join(CONFIG, "policy.yaml"), "params file of the policy node (checkpoint, limits)"),
    "grasp_source": ("planner", "planner (geometric grasp planner) or policy (the VLA policy node)"),
    "image_topic": (CAMERA.image, "colour image (sensor_msgs/Image)"),
    "depth_topic": (CAMERA.depth, "depth aligned to the colour image (16UC1 mm or 32FC1 m)"),
    "camera_info_topic": (CAMERA.camera_info, "CameraInfo of the colour image"),
    "namespace": ("", "namespace of all nodes"),
    "device": ("", "torch device for every model: auto, cpu, cuda, cuda:N (empty: the config's)"),
    "detector_model": ("", "Grounding DINO hub id or local directory (empty: the config's)"),
    "segmenter_model": ("", "SAM hub id or local directory (empty: the config's)"),
}


def _nodes(value):
    camera = CameraTopics(value["image_topic"], value["depth_topic"], value["camera_info_topic"])
    models = {"detector": value["detector_model"], "segmenter": value["segmenter_model"]}
    files = [value["perception_config"], value["pick_config"], value["policy_config"]]
    specs, node_params = pick_graph_and_params(False, True, value["grasp_source"], files)
    return node_actions(specs, value["namespace"], files,
                        lambda spec: parameter_overrides(spec, value["instruction"], value["device"], models,
                                                         node_params), camera)


def generate_launch_description():
    return launch_description(ARGUMENTS, _nodes)
