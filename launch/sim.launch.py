"""ros2 launch dino_vla sim.launch.py instruction:="pick up the cup" perception:=ground-truth [grasp_source:=policy]

rviz:=true also starts RViz 2 with config/dino_vla.rviz (camera image, markers, object cloud, grasp poses;
launch_support.rviz_node).

The simulated robot (MuJoCo table-top, sim node) with the pick graph of dino_vla/graph.py. perception:=models
runs the detector + segmenter (pretrained weights needed); ground-truth lets the simulator's segmentation
stand in for them (labelled "simulator ground truth" in every output). grasp_source:=policy takes the grasps
from the VLA policy node (checkpoint from config/policy.yaml) instead of the geometric planner.
`dino-vla sim-pick` starts the same description where ros2 launch does not exist.
"""
import os

from ament_index_python.packages import get_package_share_directory

from dino_vla.graph import CameraTopics, parameter_overrides, pick_graph_and_params
from dino_vla.launch_support import launch_description, node_actions

CONFIG = os.path.join(get_package_share_directory("dino_vla"), "config")
ARGUMENTS = {
    "instruction": ("pick up the cup", "picked once at start-up (empty: wait for goals on `pick`)"),
    "perception": ("ground-truth", "ground-truth (the simulator's segmentation) or models"),
    "seed": ("0", "scene layout"),
    "grasp_source": ("planner", "planner (geometric grasp planner) or policy (the VLA policy node)"),
    "namespace": ("", "namespace of all nodes"),
    "device": ("", "torch device of the model nodes (empty: the config's)"),
}


def _nodes(value):
    models = value["perception"] == "models"
    if value["perception"] not in ("models", "ground-truth"):
        raise ValueError(f"perception must be models or ground-truth, got {value['perception']!r}")
    files = [os.path.join(CONFIG, name) for name in ("perception.yaml", "pick.yaml", "policy.yaml", "sim.yaml")]
    specs, node_params = pick_graph_and_params(True, models, value["grasp_source"], files)
    node_params["sim"]["seed"] = int(value["seed"])
    return node_actions(specs, value["namespace"], files,
                        lambda spec: parameter_overrides(spec, value["instruction"], value["device"],
                                                         node_params=node_params), CameraTopics())


def generate_launch_description():
    return launch_description(ARGUMENTS, _nodes)
