"""ros2 launch dino_vla sim.launch.py instruction:="pick up the cup" perception:=ground-truth

The simulated robot (MuJoCo table-top, sim node) with the pick graph of dino_vla/graph.py. perception:=models
runs the detector + segmenter (pretrained weights needed); ground-truth lets the simulator's segmentation
stand in for them (labelled "simulator ground truth" in every output). `dino-vla sim-pick` starts the same
description where ros2 launch does not exist.
"""
import os

from ament_index_python.packages import get_package_share_directory

from dino_vla.graph import CameraTopics, parameter_overrides, pick_graph
from dino_vla.launch_support import launch_description, node_actions

CONFIG = os.path.join(get_package_share_directory("dino_vla"), "config")
ARGUMENTS = {
    "instruction": ("pick up the cup", "picked once at start-up (empty: wait for goals on `pick`)"),
    "perception": ("ground-truth", "ground-truth (the simulator's segmentation) or models"),
    "seed": ("0", "scene layout"),
    "namespace": ("", "namespace of all nodes"),
    "device": ("", "torch device of the model nodes (empty: the config's)"),
}


def _nodes(value):
    models = value["perception"] == "models"
    if value["perception"] not in ("models", "ground-truth"):
        raise ValueError(f"perception must be models or ground-truth, got {value['perception']!r}")
    node_params = {"sim": {"seed": int(value["seed"]), "ground_truth_masks": not models}}
    return node_actions(pick_graph(simulated=True, model_perception=models), value["namespace"],
                        [os.path.join(CONFIG, name) for name in ("perception.yaml", "pick.yaml", "sim.yaml")],
                        lambda spec: parameter_overrides(spec, value["instruction"], value["device"],
                                                         node_params=node_params), CameraTopics())


def generate_launch_description():
    return launch_description(ARGUMENTS, _nodes)
