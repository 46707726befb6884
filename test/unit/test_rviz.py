"""The RViz 2 view (config/dino_vla.rviz) and the launch files' `rviz` argument. rviz2 is not installed here:
these tests check the config file against the topics and message types the nodes publish, and the launch
descriptions (evaluated with the real launch / launch_ros objects that `make setup` installs) for the rviz2
node, its config path and remappings. Skipped with one line where launch_ros is not installed."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from dino_vla.graph import PERCEPTION_GRAPH, CameraTopics

ROOT = Path(__file__).resolve().parents[2]
RVIZ = ROOT / "config" / "dino_vla.rviz"
DISPLAY_TYPES = {"rviz_default_plugins/Image": "Image", "rviz_default_plugins/MarkerArray": "MarkerArray",
                 "rviz_default_plugins/PointCloud2": "PointCloud2", "rviz_default_plugins/Pose": "PoseStamped"}


def displays() -> dict[str, str]:
    """topic -> display class of every display with a topic."""
    doc = yaml.safe_load(RVIZ.read_text())
    return {d["Topic"]["Value"]: d["Class"] for d in doc["Visualization Manager"]["Displays"] if "Topic" in d}


def published() -> dict[str, str]:
    """Absolute topic (no namespace, default camera) -> message type, from the nodes' create_publisher calls (and
    the managed nodes' output calls, which make lifecycle publishers)."""
    out = {}
    for path in (ROOT / "dino_vla" / "ros").glob("*_node.py"):
        for msg_type, name in re.findall(r'(?:create_publisher|\.output)\(\s*(\w+),\s*"([^"]+)"', path.read_text()):
            if name.startswith("~/"):   # the perception nodes' base class: one per perception node
                out.update({f"/{spec.name}/{name[2:]}": msg_type for spec in PERCEPTION_GRAPH})
            else:
                out["/" + name] = msg_type
    out[CameraTopics().image] = "Image"   # the camera's (the sim node's "image", remapped)
    return out


def test_rviz_config_is_yaml_showing_the_graph_outputs():
    shown, topics = displays(), published()
    doc = yaml.safe_load(RVIZ.read_text())
    pick_params = yaml.safe_load((ROOT / "config" / "pick.yaml").read_text())
    frames = {s["ros__parameters"]["target_frame"] for s in pick_params.values() if "target_frame" in
              s.get("ros__parameters", {})}
    assert {doc["Visualization Manager"]["Global Options"]["Fixed Frame"]} == frames == {"base_link"}
    assert {"/detector/debug_image", "/segmenter/debug_image", "/markers", "/object_cloud", "/grasp_pose",
            CameraTopics().image} <= set(shown)
    for topic, display in shown.items():
        assert topic in topics, f"{topic} is shown in dino_vla.rviz but no node publishes it"
        assert DISPLAY_TYPES[display] == topics[topic], f"{topic}: {display} cannot show {topics[topic]}"


def test_rviz_topics_remapped_by_the_launch_are_the_configs():
    launch_support = pytest.importorskip("dino_vla.launch_support", reason="launch / launch_ros not installed")
    assert set(displays()) == set(launch_support.RVIZ_GRAPH_TOPICS) | {CameraTopics().image}


def test_rviz_config_is_installed_with_the_package():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"install\(DIRECTORY [^)]*\bconfig\b[^)]*DESTINATION share/\$\{PROJECT_NAME\}", cmake)


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluated(name: str, **arguments: str) -> list:
    """The actions launch/<name> creates at launch with these arguments (the others at their defaults)."""
    pytest.importorskip("launch_ros", reason="launch / launch_ros not installed (make setup installs them)")
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    description = _load(ROOT / "launch" / name).generate_launch_description()
    context = LaunchContext()
    context.launch_configurations.update(arguments)
    actions = []
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.visit(context)   # sets the default where not given
        elif isinstance(entity, OpaqueFunction):
            actions += entity.visit(context) or []
    return actions


def _rviz_nodes(actions: list) -> list:
    from launch_ros.actions import Node

    return [a for a in actions if isinstance(a, Node) and a.node_package == "rviz2"]


def _arguments(node) -> list[str]:
    from launch.substitutions import TextSubstitution

    return [part[0].text for part in node.cmd[1:] if len(part) == 1 and isinstance(part[0], TextSubstitution)]


LAUNCH_FILES = ["pick.launch.py", "sim.launch.py", "perception.launch.py"]


@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_no_rviz_by_default(name):
    actions = evaluated(name)
    assert actions and not _rviz_nodes(actions)
    assert not _rviz_nodes(evaluated(name, rviz="false"))


@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_rviz_true_starts_rviz2_with_the_installed_config(name):
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchContext

    actions = evaluated(name, rviz="true")
    (rviz,) = _rviz_nodes(actions)
    assert rviz.node_executable == "rviz2"
    config = Path(get_package_share_directory("dino_vla")) / "config" / "dino_vla.rviz"
    assert _arguments(rviz)[:2] == ["-d", str(config)]
    assert config.read_bytes() == RVIZ.read_bytes(), "the installed config is stale: run make setup"
    # the graph's nodes end the launch when they exit; closing RViz leaves the graph running
    from launch_ros.actions import Node

    assert all(getattr(a, "_ExecuteLocal__on_exit", None) for a in actions if a is not rviz and isinstance(a, Node))
    assert getattr(rviz, "_ExecuteLocal__on_exit", None) is None
    rviz._perform_substitutions(LaunchContext())
    assert rviz.expanded_remapping_rules in (None, [])   # defaults: the config's topics as they are
    assert len(actions) == len(evaluated(name)) + 1


def test_rviz_follows_the_namespace_and_camera_topic():
    from launch import LaunchContext

    (rviz,) = _rviz_nodes(evaluated("pick.launch.py", rviz="True", namespace="robot1", image_topic="/cam/rgb"))
    rviz._perform_substitutions(LaunchContext())
    remaps = dict(rviz.expanded_remapping_rules)
    assert remaps["/markers"] == "/robot1/markers" and remaps["/detector/debug_image"] == "/robot1/detector/debug_image"
    assert remaps[CameraTopics().image] == "/cam/rgb"


def test_a_bad_rviz_value_is_refused():
    with pytest.raises(ValueError, match="rviz must be true or false"):
        evaluated("perception.launch.py", rviz="maybe")
