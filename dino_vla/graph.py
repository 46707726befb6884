"""The package's node graphs, described once. The launch files in launch/ (real ROS 2 sites) and
`dino-vla launch` / `dino-vla sim-pick` (here, without ros2 launch) start exactly these nodes with
these arguments."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CameraTopics:
    """An RGB-D camera's topics (realsense2_camera's names by default)."""

    image: str = "/camera/color/image_raw"
    depth: str = "/camera/aligned_depth_to_color/image_raw"
    camera_info: str = "/camera/color/camera_info"


@dataclass(frozen=True)
class NodeSpec:
    name: str         # node name, also its section in the params files
    executable: str   # in lib/dino_vla, for launch_ros
    module: str       # python -m entry, for the local starter
    camera: tuple[str, ...] = ("image",)  # CameraTopics fields it subscribes (the sim: publishes)


FEATURES = NodeSpec("features", "features_node", "dino_vla.ros.features_node")
DETECTOR = NodeSpec("detector", "detector_node", "dino_vla.ros.detector_node")
SEGMENTER = NodeSpec("segmenter", "segmenter_node", "dino_vla.ros.segmenter_node")
LOCALISER = NodeSpec("localiser", "localiser_node", "dino_vla.ros.localiser_node", ("depth", "camera_info"))
PICK = NodeSpec("pick", "pick_node", "dino_vla.ros.pick_node", ("depth", "camera_info"))
SIM = NodeSpec("sim", "sim_node", "dino_vla.ros.sim_node", ("image", "depth", "camera_info"))
ALL_NODES = (FEATURES, DETECTOR, SEGMENTER, LOCALISER, PICK, SIM)

PERCEPTION_GRAPH = (FEATURES, DETECTOR, SEGMENTER)


def pick_graph(simulated: bool, model_perception: bool) -> tuple[NodeSpec, ...]:
    """Detector + segmenter produce the masks, or (simulation without weights) the simulator's ground
    truth stands in for them."""
    if not (model_perception or simulated):
        raise ValueError("without the detector and segmenter only the simulator can provide masks")
    return (((SIM,) if simulated else ()) + ((DETECTOR, SEGMENTER) if model_perception else ())
            + (LOCALISER, PICK))


def parameter_overrides(spec: NodeSpec, instruction: str | None = None, device: str | None = None,
                        models: dict[str, str] | None = None,
                        node_params: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Values that replace the params files': empty/None means "keep the files'"."""
    out: dict[str, Any] = {}
    if instruction and spec in (DETECTOR, PICK):
        out["instruction"] = instruction
    if device and spec in PERCEPTION_GRAPH:
        out["device"] = device
    if models and models.get(spec.name):
        out["model"] = models[spec.name]
    out.update((node_params or {}).get(spec.name, {}))
    return out


def remappings(spec: NodeSpec, camera: CameraTopics = CameraTopics()) -> list[tuple[str, str]]:
    return [(name, getattr(camera, name)) for name in spec.camera]


def ros_arguments(spec: NodeSpec, params_files: list[str], camera: CameraTopics = CameraTopics(),
                  namespace: str = "", overrides: dict[str, Any] | None = None) -> list[str]:
    """The --ros-args a launch_ros Node with the same settings would pass (later params files override
    earlier ones)."""
    args = ["--ros-args", "-r", f"__node:={spec.name}"]
    for path in params_files:
        args += ["--params-file", path]
    if namespace:
        args += ["-r", f"__ns:={namespace if namespace.startswith('/') else '/' + namespace}"]
    for src, dst in remappings(spec, camera):
        args += ["-r", f"{src}:={dst}"]
    for name, value in (overrides or {}).items():
        args += ["-p", f"{name}:={json.dumps(value)}"]  # JSON strings are YAML strings: "1.5" stays text
    return args
