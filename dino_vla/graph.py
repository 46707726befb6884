"""The perception node graph, described once. launch/pick.launch.py (real ROS 2 sites) and
`dino-vla launch` (here, without ros2 launch) both start exactly these nodes with these arguments."""
from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeSpec:
    name: str         # node name, also its section in config/perception.yaml
    executable: str   # in lib/dino_vla, for launch_ros
    module: str       # python -m entry, for the local starter


PERCEPTION_GRAPH = (
    NodeSpec("features", "features_node", "dino_vla.ros.features_node"),
    NodeSpec("detector", "detector_node", "dino_vla.ros.detector_node"),
    NodeSpec("segmenter", "segmenter_node", "dino_vla.ros.segmenter_node"),
)

DEFAULT_IMAGE_TOPIC = "/camera/color/image_raw"


def parameter_overrides(spec: NodeSpec, instruction: str | None = None, device: str | None = None,
                        models: dict[str, str] | None = None) -> dict[str, str]:
    """Values that replace the params file's for ``spec``: empty/None means "keep the file's"."""
    out: dict[str, str] = {}
    if instruction and spec.name == "detector":
        out["instruction"] = instruction
    if device:
        out["device"] = device
    if models and models.get(spec.name):
        out["model"] = models[spec.name]
    return out


def remappings(image_topic: str = DEFAULT_IMAGE_TOPIC) -> list[tuple[str, str]]:
    return [("image", image_topic)]


def ros_arguments(spec: NodeSpec, params_file: str, image_topic: str = DEFAULT_IMAGE_TOPIC,
                  namespace: str = "", overrides: dict[str, str] | None = None) -> list[str]:
    """The --ros-args a launch_ros Node with the same settings would pass."""
    args = ["--ros-args", "-r", f"__node:={spec.name}", "--params-file", params_file]
    if namespace:
        args += ["-r", f"__ns:={namespace if namespace.startswith('/') else '/' + namespace}"]
    for src, dst in remappings(image_topic):
        args += ["-r", f"{src}:={dst}"]
    for name, value in (overrides or {}).items():
        args += ["-p", f"{name}:={json.dumps(value)}"]  # JSON strings are YAML strings: "1.5" stays text
    return args
