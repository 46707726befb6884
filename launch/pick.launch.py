"""ros2 launch dino_vla pick.launch.py instruction:="pick up the cup"

Starts the perception graph described in dino_vla/graph.py (the same description `dino-vla launch`
uses where ros2 launch does not exist) with parameters from config/perception.yaml.
DDS: this file uses the site's own DDS settings; it does not impose the loopback profile.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import Node

from dino_vla.graph import DEFAULT_IMAGE_TOPIC, PERCEPTION_GRAPH, parameter_overrides, remappings

ARGUMENTS = {
    "instruction": ("", "what to pick, e.g. 'pick up the cup' (empty: the config's)"),
    "config": (os.path.join(get_package_share_directory("dino_vla"), "config", "perception.yaml"),
               "ROS 2 params file of the perception nodes"),
    "image_topic": (DEFAULT_IMAGE_TOPIC, "camera image topic (sensor_msgs/Image)"),
    "namespace": ("", "namespace of all nodes"),
    "device": ("", "torch device for every model: auto, cpu, cuda, cuda:N (empty: the config's)"),
    "features_model": ("", "DINOv2 hub id or local directory (empty: the config's)"),
    "detector_model": ("", "Grounding DINO hub id or local directory (empty: the config's)"),
    "segmenter_model": ("", "SAM hub id or local directory (empty: the config's)"),
}


def _nodes(context):
    value = {name: context.launch_configurations[name] for name in ARGUMENTS}
    models = {spec.name: value[f"{spec.name}_model"] for spec in PERCEPTION_GRAPH}
    return [Node(package="dino_vla", executable=spec.executable, name=spec.name,
                 namespace=value["namespace"], output="screen", emulate_tty=True,
                 parameters=[value["config"],
                             parameter_overrides(spec, value["instruction"], value["device"], models)],
                 remappings=remappings(value["image_topic"]))
            for spec in PERCEPTION_GRAPH]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, (default, text) in ARGUMENTS.items()]
        + [OpaqueFunction(function=_nodes)])
