"""What the launch files in launch/ share (only they import this: launch and launch_ros come with a ROS 2
distribution; here `make setup` builds them into the venv only for test/launch). `dino-vla launch` /
`sim-pick` start the same graph descriptions without them."""
from __future__ import annotations

import os
from typing import Any, Callable

import launch.logging
from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, OpaqueFunction, RegisterEventHandler
from launch.events import Shutdown, matches_action
from launch.events.process import ProcessExited
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from dino_vla.graph import CameraTopics, NodeSpec, remappings

# rviz:=true starts RViz 2 with config/dino_vla.rviz. The config names the graph's outputs without a namespace
# and the default camera image; rviz_node remaps them to the launch's namespace and camera topic.
RVIZ_ARGUMENT = ("false", "true: also start rviz2 with config/dino_vla.rviz (camera and debug images, the "
                          "localiser's markers and object cloud, the grasp poses)")
RVIZ_GRAPH_TOPICS = ("/features/debug_image", "/detector/debug_image", "/segmenter/debug_image", "/markers",
                     "/object_cloud", "/grasp_pose", "/policy/grasp_pose")


def end_launch_once(context: LaunchContext, reason: str) -> list:
    """A Shutdown event, unless one was already emitted: nodes that exit together (SIGINT to the process
    group) each see the launch still running, and a second Shutdown makes launch_ros shut its ROS adapter
    twice, which fails the whole launch with exit code 1."""
    if context.is_shutdown or getattr(context.locals, "dino_vla_ending", False):
        return []
    context.extend_globals({"dino_vla_ending": True})
    return [EmitEvent(event=Shutdown(reason=reason))]


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
        return end_launch_once(context, reason)
    return on_exit


def node_actions(specs: tuple[NodeSpec, ...], namespace: str, params_files: list[str],
                 overrides: Callable[[NodeSpec], dict], camera: CameraTopics) -> list:
    actions: list = []
    for spec in specs:
        kind = LifecycleNode if spec.managed else Node
        node = kind(package="dino_vla", executable=spec.executable, name=spec.name, namespace=namespace,
                    output="screen", emulate_tty=True, parameters=[*params_files, overrides(spec)],
                    remappings=remappings(spec, camera), on_exit=end_launch_when_exited(spec.name))
        actions += [node, *(activate_when_started(node, spec.name) if spec.managed else ())]
    return actions


def activate_when_started(node: LifecycleNode, node_name: str) -> list:
    """A managed node is configured (its model loads) as soon as its services answer and activated once
    configured; a failed configure ends the launch, like a node that exits. A node deactivated later
    (`ros2 lifecycle set`, a lifecycle manager) stays inactive."""
    def change(transition_id: int) -> EmitEvent:
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id))

    reason = f"{node_name} failed to configure (its log says why); the graph cannot work without it"
    return [
        RegisterEventHandler(OnStateTransition(target_lifecycle_node=node, start_state="configuring",
                                               goal_state="inactive",
                                               entities=[change(Transition.TRANSITION_ACTIVATE)])),
        RegisterEventHandler(OnStateTransition(target_lifecycle_node=node, start_state="configuring",
                                               goal_state="unconfigured",
                                               entities=[LogInfo(msg=f"{reason}: ending the launch"),
                                                         OpaqueFunction(function=lambda context:
                                                                        end_launch_once(context, reason))])),
        change(Transition.TRANSITION_CONFIGURE),
    ]


def rviz_config() -> str:
    return os.path.join(get_package_share_directory("dino_vla"), "config", "dino_vla.rviz")


def rviz_node(namespace: str = "", camera: CameraTopics = CameraTopics()) -> Node:
    """rviz2 -d <share>/config/dino_vla.rviz, its topics remapped to the graph's namespace and camera. Not
    required: closing RViz leaves the graph running."""
    prefix = "/" + namespace.strip("/") if namespace.strip("/") else ""
    remaps = [(topic, prefix + topic) for topic in RVIZ_GRAPH_TOPICS if prefix]
    if camera.image != CameraTopics().image:
        remaps.append((CameraTopics().image, camera.image))
    return Node(package="rviz2", executable="rviz2", name="rviz2", namespace=namespace, output="screen",
                arguments=["-d", rviz_config()], remappings=remaps)


def is_true(name: str, value: str) -> bool:
    if value.strip().lower() in ("true", "1"):
        return True
    if value.strip().lower() in ("false", "0"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def launch_description(arguments: dict[str, tuple[str, str]], nodes: Callable) -> LaunchDescription:
    """Declared arguments (name -> (default, description)) plus `rviz`, then nodes(values: dict) evaluated at
    launch, and with rviz:=true the rviz2 node on the same namespace and camera image."""
    def evaluate(context):
        values: dict[str, Any] = {name: context.launch_configurations[name] for name in arguments}
        actions = nodes(values)
        if is_true("rviz", context.launch_configurations["rviz"]):
            camera = CameraTopics(image=values.get("image_topic") or CameraTopics().image)
            actions = [*actions, rviz_node(values.get("namespace", ""), camera)]
        return actions

    return LaunchDescription([DeclareLaunchArgument(name, default_value=default, description=text)
                              for name, (default, text) in {**arguments, "rviz": RVIZ_ARGUMENT}.items()]
                             + [OpaqueFunction(function=evaluate)])
