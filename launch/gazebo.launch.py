"""ros2 launch dino_vla gazebo.launch.py instruction:="pick up the cup" [grasp_source:=policy]

rviz:=true also starts RViz 2 with config/dino_vla.rviz (camera and debug images, markers, object cloud,
grasp poses; launch_support.rviz_node).

For sites with Gazebo Sim (Harmonic or later) and ros_gz: the table-top world dino_vla/sim/worlds/tabletop.sdf,
a ros_gz_bridge from its RGB-D camera onto the RealSense-style topics, and the pick graph of
dino_vla/graph.py with the detector + segmenter (pretrained weights needed). The world has no arm: grasp
commands are sent dry-run and nothing executes them, so a pick ends with `timeout` after planning unless
your site adds an executor on `grasp_command` / `grasp_outcome`. grasp_source:=policy takes the grasps from
the VLA policy node (checkpoint from config/policy.yaml) instead of the geometric planner.
NOT RUN HERE: no Gazebo can be installed on the machines this package is developed on; the world is only
schema-checked (`ign sdf -k`). The MuJoCo simulation (sim.launch.py, `dino-vla sim-pick`) is what was run.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch_ros.actions import Node

import dino_vla
from dino_vla.config import CAMERA_POSE_IN_BASE
from dino_vla.graph import CameraTopics, parameter_overrides, pick_graph_and_params
from dino_vla.launch_support import launch_description, node_actions

CONFIG = os.path.join(get_package_share_directory("dino_vla"), "config")
WORLD = os.path.join(os.path.dirname(dino_vla.__file__), "sim", "worlds", "tabletop.sdf")
CAMERA = CameraTopics()
ARGUMENTS = {
    "instruction": ("", "picked once at start-up (empty: wait for goals on `pick`)"),
    "world": (WORLD, "SDF world"),
    "grasp_source": ("planner", "planner (geometric grasp planner) or policy (the VLA policy node)"),
    "device": ("", "torch device of the model nodes (empty: the config's)"),
}
BRIDGED = (("/rgbd/image", "sensor_msgs/msg/Image", "gz.msgs.Image", CAMERA.image),
           ("/rgbd/depth_image", "sensor_msgs/msg/Image", "gz.msgs.Image", CAMERA.depth),
           ("/rgbd/camera_info", "sensor_msgs/msg/CameraInfo", "gz.msgs.CameraInfo", CAMERA.camera_info),
           ("/clock", "rosgraph_msgs/msg/Clock", "gz.msgs.Clock", "/clock"))


def _nodes(value):
    gazebo = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(get_package_share_directory("ros_gz_sim"), "launch",
                                                   "gz_sim.launch.py")),
        launch_arguments={"gz_args": f"-r -s --headless-rendering {value['world']}"}.items())
    bridge = Node(package="ros_gz_bridge", executable="parameter_bridge", output="screen",
                  arguments=[f"{gz}@{ros}[{gz_type}" for gz, ros, gz_type, _ in BRIDGED],
                  remappings=[(gz, ros_topic) for gz, _, _, ros_topic in BRIDGED if gz != ros_topic])
    x, y, z, qx, qy, qz, qw = CAMERA_POSE_IN_BASE  # the world's camera is the MuJoCo camera
    camera_tf = Node(package="tf2_ros", executable="static_transform_publisher", arguments=[
        "--x", str(x), "--y", str(y), "--z", str(z), "--qx", str(qx), "--qy", str(qy), "--qz", str(qz),
        "--qw", str(qw), "--frame-id", "base_link", "--child-frame-id", "camera_color_optical_frame"])
    files = [os.path.join(CONFIG, name) for name in ("perception.yaml", "pick.yaml", "policy.yaml")]
    specs, node_params = pick_graph_and_params(False, True, value["grasp_source"], files)
    graph = node_actions(specs, "", files,
                         lambda spec: parameter_overrides(spec, value["instruction"], value["device"],
                                                          node_params=node_params), CAMERA)
    return [gazebo, bridge, camera_tf, *graph]


def generate_launch_description():
    return launch_description(ARGUMENTS, _nodes)
