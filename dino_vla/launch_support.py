"""What the launch files in launch/ share (only they import this: launch and launch_ros come with a ROS 2
distribution; here `make setup` builds them into the venv only for test/launch). `dino-vla launch` /
`sim-pick` start the same graph descriptions without them."""
from __future__ import annotations

from typing import Callable

import launch.logging
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction
from launch.events import Shutdown
from launch.events.process import ProcessExited
from launch_ros.actions import Node

from dino_vla.graph import CameraTopics, NodeSpec, remappings


def end_launch_when_exited(node_name: str) -> Callable[[ProcessExited, LaunchContext], list | None]:
    """Every node of a graph is required: one that exits while the launch runs (a model that cannot load
    exits 1 at start-up) ends the launch at once, with the reason in its log, instead of leaving the others
    waiting for inputs that will never come."""
    def on_exit(event: ProcessExited, context: LaunchContext) -> list | None:
        if context.is_shutdown:   # the launch is ending anyway: its nodes exiting is the expected part
            return None
        reason = f"{node_name} exited with code {event.returncode}; the graph cannot work without it"
        logger = launch.logging.get_logger("launch")
        # exit code 0: the node was stopped on purpose (SIGINT to it or its process group), not a failure
        (logger.error if event.returncode else logger.info)(f"{reason}: ending the launch")
        return [EmitEvent(event=Shutdown(reason=reason))]
    return on_exit


def node_actions(specs: tuple[NodeSpec, ...], namespace: str, params_files: list[str],
                 overrides: Callable[[NodeSpec], dict], camera: CameraTopics) -> list[Node]:
    return [Node(package="dino_vla", executable=spec.executable, name=spec.name, namespace=namespace,
                 output="screen", emulate_tty=True, parameters=[*params_files, overrides(spec)],
                 remappings=remappings(spec, camera), on_exit=end_launch_when_exited(spec.name))
            for spec in specs]


def launch_description(arguments: dict[str, tuple[str, str]], nodes: Callable) -> LaunchDescription:
    """Declared arguments (name -> (default, description)), then nodes(values: dict) evaluated at launch."""
    def evaluate(context):
        return nodes({name: context.launch_configurations[name] for name in arguments})

    return LaunchDescription([DeclareLaunchArgument(name, default_value=default, description=text)
                              for name, (default, text) in arguments.items()]
                             + [OpaqueFunction(function=evaluate)])
