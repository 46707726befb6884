"""What the launch files in launch/ share (only they import this: launch and launch_ros exist on real ROS 2
sites, not in this repository's venv). `dino-vla launch` / `sim-pick` start the same graph descriptions."""
from __future__ import annotations

from typing import Callable

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import Node

from dino_vla.graph import CameraTopics, NodeSpec, remappings


def node_actions(specs: tuple[NodeSpec, ...], namespace: str, params_files: list[str],
                 overrides: Callable[[NodeSpec], dict], camera: CameraTopics) -> list[Node]:
    return [Node(package="dino_vla", executable=spec.executable, name=spec.name, namespace=namespace,
                 output="screen", emulate_tty=True, parameters=[*params_files, overrides(spec)],
                 remappings=remappings(spec, camera))
            for spec in specs]


def launch_description(arguments: dict[str, tuple[str, str]], nodes: Callable) -> LaunchDescription:
    """Declared arguments (name -> (default, description)), then nodes(values: dict) evaluated at launch."""
    def evaluate(context):
        return nodes({name: context.launch_configurations[name] for name in arguments})

    return LaunchDescription([DeclareLaunchArgument(name, default_value=default, description=text)
                              for name, (default, text) in arguments.items()]
                             + [OpaqueFunction(function=evaluate)])
