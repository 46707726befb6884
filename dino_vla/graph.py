"""The package's node graphs, described once. The launch files in launch/ (real ROS 2 sites) and
`dino-vla launch` / `dino-vla sim-pick` (here, without ros2 launch) start exactly these nodes with
these arguments."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from dino_vla.config import GRASP_SOURCES


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
    # an output the node publishes only once it can work (after loading its model): a starter waits for
    # every node's before it sends work, since model nodes take far longer to start than the others
    ready_topic: str = ""
    # a managed (lifecycle) node: whoever starts it configures and activates it (ros/managed_node.py)
    managed: bool = False


FEATURES = NodeSpec("features", "features_node", "dino_vla.ros.features_node", ready_topic="features",
                    managed=True)
DETECTOR = NodeSpec("detector", "detector_node", "dino_vla.ros.detector_node", ready_topic="detections",
                    managed=True)
SEGMENTER = NodeSpec("segmenter", "segmenter_node", "dino_vla.ros.segmenter_node", ready_topic="masks",
                     managed=True)
LOCALISER = NodeSpec("localiser", "localiser_node", "dino_vla.ros.localiser_node", ("depth", "camera_info"),
                     "objects")
PICK = NodeSpec("pick", "pick_node", "dino_vla.ros.pick_node", ("depth", "camera_info"), "grasp_command")
SIM = NodeSpec("sim", "sim_node", "dino_vla.ros.sim_node", ("image", "depth", "camera_info"), "grasp_outcome")
# the image is the mask-free policy's and a crop-feature policy's (other object-token policies leave it unsubscribed)
POLICY = NodeSpec("policy", "policy_node", "dino_vla.ros.policy_node", ("image", "depth", "camera_info"),
                  "policy/grasp", managed=True)
RECORDER = NodeSpec("recorder", "recorder_node", "dino_vla.ros.recorder_node", ("image", "depth", "camera_info"))
ALL_NODES = (FEATURES, DETECTOR, SEGMENTER, LOCALISER, PICK, SIM, POLICY, RECORDER)

PERCEPTION_GRAPH = (FEATURES, DETECTOR, SEGMENTER)


def pick_graph(simulated: bool, model_perception: bool, grasp_source: str = "planner",
               mask_free: bool = False) -> tuple[NodeSpec, ...]:
    """Detector + segmenter produce the masks, or (simulation without weights) the simulator's ground
    truth stands in for them. grasp_source policy adds the DINOv2 features and the policy node, whose
    grasps the pick node then executes (start it with pick_graph_params). A mask-free policy (mask_free)
    needs no masks at all: camera (or simulator), features, policy and pick node only."""
    if not (model_perception or simulated):
        raise ValueError("without the detector and segmenter only the simulator can provide masks")
    if grasp_source not in GRASP_SOURCES:
        raise ValueError(f"grasp_source must be one of {', '.join(GRASP_SOURCES)}, got {grasp_source!r}")
    policy = grasp_source == "policy"
    if mask_free and not policy:
        raise ValueError("mask_free is a kind of policy: it needs grasp_source policy")
    camera = (SIM,) if simulated else ()
    if mask_free:
        return camera + (FEATURES, POLICY, PICK)
    return (camera + ((DETECTOR, SEGMENTER) if model_perception else ())
            + ((FEATURES,) if policy else ()) + (LOCALISER,) + ((POLICY,) if policy else ()) + (PICK,))


def policy_checkpoint(params_files: Sequence[str] = (), checkpoint: str | None = None) -> str:
    """The policy checkpoint directory a graph runs: `checkpoint`, else the one params_files name (default
    `shipped`)."""
    from dino_vla.config import load_config
    from dino_vla.policy.checkpoint import resolve_checkpoint

    return resolve_checkpoint(checkpoint or load_config(*params_files)["policy"]["checkpoint"])


def is_mask_free(checkpoint: str) -> bool:
    """Whether a policy checkpoint is of the mask-free kind (CheckpointError: not a checkpoint)."""
    from dino_vla.policy.checkpoint import read_info
    from dino_vla.policy.maskfree_model import MASK_FREE

    return read_info(checkpoint).kind == MASK_FREE


def pick_graph_params(simulated: bool, model_perception: bool, grasp_source: str = "planner",
                      params_files: Sequence[str] = (), checkpoint: str | None = None) -> dict[str, dict[str, Any]]:
    """What the nodes of pick_graph(...) need on top of the params files to work together: the simulator's
    masks stand in for the detector + segmenter when those do not run; with the policy, the pick node takes
    the policy's grasps (the policy node stays dry-run, so only the pick node commands the arm), the masks
    hold every visible object (masks_scope all_objects, of the simulator or the detector: the policy grounds
    the words), and the features node loads the DINOv2 weights the policy's checkpoint was trained on:
    `checkpoint`, else the one params_files name (default `shipped`). A mask-free checkpoint takes no masks:
    the simulator publishes none (ground_truth_masks false)."""
    pick_graph(simulated, model_perception, grasp_source)   # the same checks
    out: dict[str, dict[str, Any]] = {"sim": {"ground_truth_masks": not model_perception}} if simulated else {}
    if grasp_source == "policy":
        from dino_vla.policy.checkpoint import read_info

        checkpoint = checkpoint or policy_checkpoint(params_files)
        resolved = policy_checkpoint(params_files, checkpoint)
        out.update(features={"model": read_info(resolved).backbone},
                   pick={"grasp_source": "policy"}, policy={"dry_run": True, "checkpoint": checkpoint})
        if is_mask_free(resolved):
            if simulated:
                out["sim"]["ground_truth_masks"] = False
        elif model_perception:
            out["detector"] = {"masks_scope": "all_objects"}
        else:
            out["sim"]["masks_scope"] = "all_objects"
    return out


def pick_graph_and_params(simulated: bool, model_perception: bool, grasp_source: str = "planner",
                          params_files: Sequence[str] = (), checkpoint: str | None = None
                          ) -> tuple[tuple[NodeSpec, ...], dict[str, dict[str, Any]]]:
    """pick_graph and pick_graph_params together, the graph chosen by the policy checkpoint's kind (a mask-free
    one runs without masks): what every starter (sim-pick, the launch files) runs."""
    mask_free = grasp_source == "policy" and is_mask_free(policy_checkpoint(params_files, checkpoint))
    return (pick_graph(simulated, model_perception, grasp_source, mask_free),
            pick_graph_params(simulated, model_perception, grasp_source, params_files, checkpoint))


def parameter_overrides(spec: NodeSpec, instruction: str | None = None, device: str | None = None,
                        models: dict[str, str] | None = None,
                        node_params: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Values that replace the params files': empty/None means "keep the files'". Managed nodes wait for
    their starter's transitions (autostart false)."""
    out: dict[str, Any] = {"autostart": False} if spec.managed else {}
    if instruction and spec in (DETECTOR, PICK):
        out["instruction"] = instruction
    if device and spec in PERCEPTION_GRAPH + (POLICY,):
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
    return ["--ros-args", "-r", f"__node:={spec.name}", *_shared_arguments(params_files, namespace),
            *_remap_arguments([spec], camera), *_parameter_arguments(overrides or {})]


def composed_ros_arguments(specs: Sequence[NodeSpec], params_files: list[str], camera: CameraTopics = CameraTopics(),
                           namespace: str = "", overrides: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """The --ros-args of one process that holds the nodes of `specs` under their own names: each node's
    overrides are prefixed with its name (`-p detector:instruction:=...`), as a remapping or an unprefixed
    `-p` would reach every node of the process (the camera remappings may: each names its camera topic the
    same way)."""
    args = ["--ros-args", *_shared_arguments(params_files, namespace), *_remap_arguments(specs, camera)]
    for spec in specs:
        args += _parameter_arguments((overrides or {}).get(spec.name, {}), prefix=f"{spec.name}:")
    return args


def _shared_arguments(params_files: list[str], namespace: str) -> list[str]:
    args = []
    for path in params_files:
        args += ["--params-file", path]
    if namespace:
        args += ["-r", f"__ns:={namespace if namespace.startswith('/') else '/' + namespace}"]
    return args


def _remap_arguments(specs: Sequence[NodeSpec], camera: CameraTopics) -> list[str]:
    args = []
    for src, dst in dict.fromkeys(r for spec in specs for r in remappings(spec, camera)):
        args += ["-r", f"{src}:={dst}"]
    return args


def _parameter_arguments(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    args = []
    for name, value in overrides.items():
        args += ["-p", f"{prefix}{name}:={json.dumps(value)}"]  # JSON strings are YAML strings: "1.5" stays text
    return args
