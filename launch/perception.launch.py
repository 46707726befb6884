"""ros2 launch dino_vla perception.launch.py instruction:="pick up the cup"

rviz:=true also starts RViz 2 with config/dino_vla.rviz (camera and debug images, markers, object cloud,
grasp poses; launch_support.rviz_node).

Only the perception graph (features, detector, segmenter) of dino_vla/graph.py on a camera topic: the
detection source for other robot stacks. `dino-vla launch` starts the same description here.
DDS: this file uses the site's own DDS settings; it does not impose the loopback profile.
"""
import os

from ament_index_python.packages import get_package_share_directory

from dino_vla.graph import PERCEPTION_GRAPH, CameraTopics, parameter_overrides
from dino_vla.launch_support import launch_description, node_actions

ARGUMENTS = {
    "instruction": ("", "what to look for, e.g. 'pick up the cup' (empty: the config's)"),
    "config": (os.path.join(get_package_share_directory("dino_vla"), "config", "perception.yaml"),
               "ROS 2 params file of the perception nodes"),
    "image_topic": (CameraTopics().image, "camera image topic (sensor_msgs/Image)"),
    "namespace": ("", "namespace of all nodes"),
    "device": ("", "torch device for every model: auto, cpu, cuda, cuda:N (empty: the config's)"),
    "features_model": ("", "DINOv2 hub id or local directory (empty: the config's)"),
    "detector_model": ("", "Grounding DINO hub id or local directory (empty: the config's)"),
    "segmenter_model": ("", "SAM hub id or local directory (empty: the config's)"),
}


def _nodes(value):
    models = {spec.name: value[f"{spec.name}_model"] for spec in PERCEPTION_GRAPH}
    return node_actions(PERCEPTION_GRAPH, value["namespace"], [value["config"]],
                        lambda spec: parameter_overrides(spec, value["instruction"], value["device"], models),
                        CameraTopics(image=value["image_topic"]))


def generate_launch_description():
    return launch_description(ARGUMENTS, _nodes)
