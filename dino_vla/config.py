"""The one parameter schema of the package's nodes. Nodes declare their ROS parameters from it, and the
CLI and benchmarks read the same YAML file (ROS 2 params-file format) through it.

A leaf: it imports nothing of the project (and no torch), so every layer, the torch-free geometric nodes
included, can read parameters. The constants the schema needs (default weights, grasp sources) live here
and the modules that use them import them from here."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Default weights of the perception stages (Hugging Face hub ids); the model adapters default to these too.
DEFAULT_MODELS = {"features": "facebook/dinov2-small", "detector": "IDEA-Research/grounding-dino-tiny",
                  "segmenter": "facebook/sam-vit-base"}
# which weights the perception stages run: pretrained, tiny random-weight ones, or pretrained where they can be had
MODEL_CHOICES = ("auto", "pretrained", "tiny")
GRASP_SOURCES = ("planner", "policy")   # where the pick node's grasps come from
# where a mask-free policy's grasp pose comes from (policy.runner.MaskFreePolicy.decide): depth, the geometric
# planner on the object the depth shows at the pixel it points at (geometry.depth_region), the learned grasp
# where the planner finds none; learned, the network's regressed offset at that pixel
GRASP_GEOMETRIES = ("depth", "learned")
# an object-token policy's object tokens (policy.tokens.ViewSettings): the appearance feature, mask (the frame's
# patch tokens averaged under the mask) or crop (the backbone's class token of the object's own crop); the
# geometry, full (position, depth-measured shape, colour name) or position (the position alone)
OBJECT_FEATURES = ("mask", "crop")
OBJECT_GEOMETRIES = ("full", "position")
SHIPPED_CHECKPOINT = "shipped"          # the policy `checkpoint` value naming the package's own checkpoint


class ConfigError(ValueError):
    """A parameter file or value that the nodes would reject."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: bool | int | float | str | tuple[float, ...]   # a tuple: a fixed-length double array
    description: str
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    pattern: str | None = None
    read_only: bool = False

    def validate(self, value: Any, where: str = "") -> Any:
        where = where or self.name
        if isinstance(self.default, tuple):
            return self._validate_array(value, where)
        kind = type(self.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
        if self.range is not None and not self.range[0] <= value <= self.range[1]:
            raise ConfigError(f"{where}: {value!r} outside [{self.range[0]}, {self.range[1]}]")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(self.choices)}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise ConfigError(f"{where}: {value!r} does not match {self.pattern}")
        return value

    def _validate_array(self, value: Any, where: str) -> tuple[float, ...]:
        n = len(self.default)
        items = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "typecode") else None
        if items is None or len(items) != n or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in items):
            raise ConfigError(f"{where}: expected {n} finite numbers, got {value!r}")
        return tuple(float(v) for v in items)


_RELIABILITY = ParamSpec("reliability", "best_effort", "QoS reliability of the camera subscriptions "
                         "(best_effort = sensor data QoS; reliable for bag replay or reliable publishers)",
                         choices=("best_effort", "reliable"), read_only=True)

# The simulated camera's optical frame in base_link (dino_vla/sim), so the simulation runs on defaults.
# A robot sets its own calibration (or use_tf). x, y, z, qx, qy, qz, qw.
CAMERA_POSE_IN_BASE = (0.55, 0.0, 0.95, -0.653281, -0.653281, 0.270598, 0.270598)


_DEVICE = ParamSpec("device", "auto", "torch device: auto (CUDA when present), cpu, cuda or cuda:N",
                    pattern=r"auto|cpu|cuda(:\d+)?", read_only=True)
_TORCH_THREADS = ParamSpec("torch_threads", 0, "CPU threads this node's torch may use; 0 = a quarter of the cores "
                           "(the pick graph's four model nodes share them; at least 1). torch's own choice, every "
                           "core in every node, makes the nodes fight over the CPU",
                           range=(0, 256), read_only=True)
_AUTOSTART = ParamSpec("autostart", True, "a managed (lifecycle) node: true = configure (load the model) and "
                       "activate itself at start-up, exiting 1 when the model cannot load, as `ros2 run` users "
                       "expect; false = start unconfigured and wait for lifecycle transitions (the launch files "
                       "and dino-vla's starters, a lifecycle manager, `ros2 lifecycle set`)", read_only=True)
_REDETECT_EVERY = ParamSpec("redetect_every", 30, "with tracking: at most this many frames from one run of the "
                            "model to the next (1 = every frame); the detector's detections (the segmenter's "
                            "masks) are carried over on the frames in between", range=(1, 100000))


def _common(default_model: str) -> tuple[ParamSpec, ...]:
    return (
        ParamSpec("model", default_model, "Hugging Face hub id or local directory (save_pretrained, "
                  "safetensors) of the model; loaded on configure", pattern=r"\S(.*\S)?", read_only=True),
        _DEVICE,
        ParamSpec("dtype", "auto", "weights/activations dtype; auto = float16 on CUDA, float32 on CPU",
                  choices=("auto", "float32", "float16", "bfloat16"), read_only=True),
        _TORCH_THREADS,
        ParamSpec("compile", False, "torch.compile the model on configure: its first frames (and every new input "
                  "shape) pay for compilation; see the README's Benchmark section for whether it pays",
                  read_only=True),
        _AUTOSTART,
        _RELIABILITY,
        ParamSpec("publish_debug_image", True, "publish an annotated image on ~/debug_image"),
    )


NODE_PARAMS: dict[str, tuple[ParamSpec, ...]] = {
    "features": _common(DEFAULT_MODELS["features"]),
    "detector": _common(DEFAULT_MODELS["detector"]) + (
        ParamSpec("instruction", "pick up the cup", "what to look for; changeable at run time here or "
                  "on the instruction topic"),
        ParamSpec("box_threshold", 0.35, "minimum box score kept", range=(0.0, 1.0)),
        ParamSpec("text_threshold", 0.25, "minimum token score for a box to be labelled with a phrase",
                  range=(0.0, 1.0)),
        ParamSpec("nms_iou", 0.5, "IoU above which overlapping boxes of one phrase are suppressed",
                  range=(0.0, 1.0)),
        ParamSpec("max_detections", 20, "at most this many boxes per image, best first", range=(1, 900)),
        ParamSpec("masks_scope", "instruction", "which objects get boxes (and so masks): instruction (what the "
                  "instruction names, labelled with its phrases) or all_objects (every object Grounding DINO "
                  "finds for the prompt `object`, each labelled `object`: the class-agnostic masks the VLA "
                  "policy grounds the instruction in)", choices=("instruction", "all_objects")),
        ParamSpec("tracking", False, "detect, then track: Grounding DINO runs on the first frame, every "
                  "redetect_every frames, on an instruction, threshold or image size change, and on any frame "
                  "where an object's tracking confidence falls below min_tracking_confidence; on the frames in "
                  "between the last boxes follow their objects by optical flow (milliseconds on a CPU) and the "
                  "detections say provenance `tracked` and how old the last detection is. false: Grounding "
                  "DINO on every frame"),
        _REDETECT_EVERY,
        ParamSpec("min_tracking_confidence", 0.5, "with tracking: the share of an object's keyframe corners whose "
                  "flow agrees on one motion, and of its pixels that still look the same, below which it counts "
                  "as lost (occluded, removed, moved too fast) and the detector runs on that frame",
                  range=(0.0, 1.0)),
    ),
    "segmenter": _common(DEFAULT_MODELS["segmenter"]) + (
        ParamSpec("image_cache_size", 30, "recent images kept to pair with detections by stamp; must "
                  "cover camera rate x detector latency (30 = 1 s at 30 Hz)", range=(1, 300), read_only=True),
        ParamSpec("crop_context", 0.0, "0: segment every box on the whole frame (one image encoding); > 0: each "
                  "box in a square crop this many times its longer side (small objects get more mask pixels; "
                  "one encoding per box). Use what the model was fine-tuned with (finetune-segmenter "
                  "--crop-context)", range=(0.0, 10.0), read_only=True),
        ParamSpec("tracking", False, "with the detector's tracking on: detections marked `tracked` get the "
                  "masks SAM made for their detection, moved and scaled with their boxes, instead of SAM running "
                  "again (it runs when their detection's masks were not made here, e.g. a dropped message). "
                  "false: SAM on every detection array, tracked or not"),
        _REDETECT_EVERY,
        ParamSpec("mask_reuse_iou", 0.9, "with tracking: a new detection whose boxes (same phrases, same order) "
                  "each overlap the boxes SAM last segmented by this IoU keeps those masks, moved with the boxes: "
                  "on a still scene SAM runs once, not at every re-detection; 1 = only identical boxes",
                  range=(0.01, 1.0)),
    ),
}


def _camera_inputs() -> tuple[ParamSpec, ...]:
    """What every node that takes masks + aligned depth + CameraInfo and the camera's pose needs
    (localiser, pick, policy, recorder)."""
    return (
        ParamSpec("target_frame", "base_link", "frame the 3D objects and grasps are expressed in",
                  pattern=r"[A-Za-z_][\w/]*", read_only=True),
        ParamSpec("camera_pose_in_target", CAMERA_POSE_IN_BASE, "static extrinsic: the camera's optical "
                  "frame in target_frame as x, y, z (m), qx, qy, qz, qw; used unless use_tf finds a transform",
                  read_only=True),
        ParamSpec("use_tf", False, "look the camera pose up with tf2 (real ROS 2 sites with tf2_ros) "
                  "instead of camera_pose_in_target", read_only=True),
        ParamSpec("sync_slop_s", 0.02, "depth, CameraInfo and masks are matched when their stamps lie "
                  "within this many seconds", range=(0.0, 1.0), read_only=True),
        ParamSpec("sync_queue_size", 30, "messages kept per input while waiting for a match; must cover "
                  "camera rate x segmentation latency", range=(1, 1000), read_only=True),
        _RELIABILITY,
    )


def _localisation() -> tuple[ParamSpec, ...]:
    """What every node that turns masks + depth into 3D objects needs (localiser, pick, recorder)."""
    return _camera_inputs() + _depth_points()


def _depth_points() -> tuple[ParamSpec, ...]:
    """Which depth readings under a mask make an object's points (pick.localiser_settings)."""
    return (
        ParamSpec("depth_min_m", 0.1, "nearer depth is invalid", range=(0.0, 10.0)),
        ParamSpec("depth_max_m", 3.0, "farther depth is invalid", range=(0.01, 20.0)),
        ParamSpec("min_points", 30, "fewer valid points in a mask: no 3D object", range=(1, 100000)),
        ParamSpec("outlier_neighbours", 20, "statistical outlier removal: neighbours considered",
                  range=(1, 200)),
        ParamSpec("outlier_std_ratio", 2.0, "statistical outlier removal: std-dev multiple kept",
                  range=(0.1, 10.0)),
        ParamSpec("cluster_eps_m", 0.02, "only the largest cluster of a mask's points (DBSCAN, neighbours within "
                  "this distance) is the object: a mask bleeding past the outline takes in surfaces behind it. "
                  "0: every point after outlier removal", range=(0.0, 1.0)),
    )


def _fingers() -> tuple[ParamSpec, ...]:
    """The gripper as the geometric grasp planner sizes a grasp (pick, and the policy's depth geometry)."""
    return (
        ParamSpec("gripper_finger_length_m", 0.05, "how far the fingers reach below the tool centre point",
                  range=(0.005, 0.5)),
        ParamSpec("gripper_clearance_m", 0.01, "added to the object's width when opening", range=(0.0, 0.1)),
    )


def _cell() -> tuple[ParamSpec, ...]:
    """The robot cell: where the arm may go and the table it must stay above (pick and policy)."""
    return (
        ParamSpec("workspace_min", (-0.45, -0.35, 0.35), "reachable box in target_frame: x, y, z minimum (m)"),
        ParamSpec("workspace_max", (0.45, 0.35, 0.9), "reachable box in target_frame: x, y, z maximum (m)"),
        ParamSpec("table_height_m", 0.40, "support surface height in target_frame; fingers stay above it",
                  range=(-5.0, 5.0)),
    )


NODE_PARAMS.update({
    "localiser": _localisation() + (
        ParamSpec("publish_clouds", True, "publish each object's points on `object_clouds`"),
    ),
    "pick": _localisation() + (
        ParamSpec("instruction", "", "when set, the node picks this once at start-up, as if a goal had been "
                  "sent (what `ros2 launch dino_vla pick.launch.py instruction:=...` does)", read_only=True),
        ParamSpec("dry_run", True, "send grasp commands marked dry_run (executors log, nothing moves); "
                  "on by default so a real arm never moves unless asked to"),
        ParamSpec("gripper_max_width_m", 0.12, "widest opening between the finger pads", range=(0.005, 0.5)),
    ) + _fingers() + _cell() + (
        ParamSpec("grasp_source", "planner", "where a pick's grasp comes from: planner (the geometric "
                  "planner on the instruction target's mask + depth) or policy (the newest grasp on "
                  "`policy/grasp` made for the goal's instruction after the goal started)",
                  choices=GRASP_SOURCES, read_only=True),
        ParamSpec("perception_timeout_s", 15.0, "a pick fails with `timeout` when no masks + depth (or, "
                  "with grasp_source policy, no policy grasp) newer than the goal arrive in this time",
                  range=(0.1, 600.0)),
        ParamSpec("execution_timeout_s", 30.0, "a pick fails with `timeout` when the executor does not "
                  "report an outcome in this time", range=(0.1, 600.0)),
    ),
    "sim": (
        ParamSpec("seed", 0, "scene layout; setting it at run time resets the scene", range=(0, 2**31 - 1)),
        ParamSpec("target", "cup", "object always placed in the scene (a catalogue name)",
                  pattern=r"[a-z_]+"),
        ParamSpec("distractors", 3, "other objects placed around it", range=(0, 5)),
        ParamSpec("rate_hz", 10.0, "camera publishing rate (sim time runs with wall time between grasps)",
                  range=(0.1, 60.0), read_only=True),
        ParamSpec("width", 640, "camera image width", range=(64, 1920), read_only=True),
        ParamSpec("height", 480, "camera image height", range=(48, 1080), read_only=True),
        ParamSpec("camera_frame", "camera_color_optical_frame", "frame_id of the camera topics",
                  read_only=True),
        ParamSpec("base_frame", "base_link", "frame of ground truth and of accepted grasp commands",
                  read_only=True),
        ParamSpec("ground_truth_masks", True, "publish the simulator's segmentation on `masks` (a labelled "
                  "stand-in for Grounding DINO + SAM; which objects: masks_scope)"),
        ParamSpec("masks_scope", "instruction", "with ground_truth_masks, which objects `masks` holds: "
                  "instruction (the objects the instruction names, labelled with its phrases) or all_objects "
                  "(every visible object, each labelled `object`: the class-agnostic masks the policy takes)",
                  choices=("instruction", "all_objects")),
        ParamSpec("lift_m", 0.15, "how far a grasp lifts; success = the object rose 80 % of this",
                  range=(0.02, 0.5)),
        ParamSpec("real_time_factor", 0.0, "grasps run at most this many times faster than real time, as an arm "
                  "would (so a STOP can arrive mid-motion); 0 = as fast as the physics runs", range=(0.0, 100.0)),
    ),
    "policy": _camera_inputs() + _cell() + (
        ParamSpec("checkpoint", SHIPPED_CHECKPOINT, "policy checkpoint directory, or `shipped` for the one in the "
                  "package (dino_vla/policy/checkpoints/sim-tiny); loaded on configure", pattern=r"\S(.*\S)?",
                  read_only=True),
        _DEVICE,
        _TORCH_THREADS,
        _AUTOSTART,
        ParamSpec("instruction", "", "what to pick; changeable at run time here or on the `instruction` topic "
                  "(each new one is a new task); empty: wait for one"),
        ParamSpec("rate_hz", 2.0, "decisions and setpoints per second", range=(0.1, 100.0), read_only=True),
        ParamSpec("max_input_age_s", 1.0, "watchdog: nothing but a `stale` status is published while the "
                  "newest features + masks + depth pair was received longer ago than this", range=(0.05, 60.0)),
        ParamSpec("dry_run", True, "grasps go out marked dry_run and nothing is sent on `grasp_command`; false: "
                  "the first decision for each new instruction is also sent once on `grasp_command` (the "
                  "executor's topic). Leave it true where a pick node executes the policy's grasps"),
        ParamSpec("max_opening_m", 0.12, "widest gripper opening commanded", range=(0.001, 0.5)),
        ParamSpec("max_speed_mps", 0.25, "the setpoint on `policy/grasp_pose` moves at most this fast between "
                  "two publications", range=(0.001, 10.0)),
        ParamSpec("max_yaw_rate_rps", 1.0, "the setpoint on `policy/grasp_pose` turns at most this fast (yaw "
                  "modulo pi: the gripper is symmetric)", range=(0.001, 50.0)),
        ParamSpec("grasp_geometry", "depth", "a mask-free policy's grasp pose: depth (the geometric planner, "
                  "as the pick node's, on the object the depth shows where the policy points; the learned pose "
                  "where it finds none) or learned (the network's regressed offset). The object-token policy "
                  "ignores it", choices=GRASP_GEOMETRIES, read_only=True),
    ) + _fingers() + _depth_points(),
    "recorder": _localisation() + (
        ParamSpec("output_dir", "", "dataset directory (required): dino_vla.dataset.format",
                  read_only=True),
        ParamSpec("append", False, "add to the dataset already in output_dir; otherwise an existing dataset "
                  "there is an error", read_only=True),
        ParamSpec("record_dry_run", False, "also record commands marked dry_run (nothing moved: their "
                  "episodes have success unknown)"),
        ParamSpec("outcome_timeout_s", 30.0, "an episode whose grasp_outcome has not come in this time is "
                  "recorded with success unknown", range=(0.1, 3600.0)),
        ParamSpec("frame_history", 30, "matched image + depth + masks sets kept to find the one a command "
                  "was planned from", range=(1, 1000), read_only=True),
    ),
})


def defaults(node: str) -> dict[str, Any]:
    return {spec.name: spec.default for spec in NODE_PARAMS[node]}


def validate_params(node: str, values: dict[str, Any], source: str = "") -> dict[str, Any]:
    """Defaults overlaid with ``values``; unknown names are errors so that typos do not pass silently."""
    specs = {spec.name: spec for spec in NODE_PARAMS[node]}
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise ConfigError(f"{source or node}: unknown parameter(s) {', '.join(unknown)} for node "
                          f"{node!r}; known: {', '.join(specs)}")
    out = defaults(node)
    for name, value in values.items():
        out[name] = specs[name].validate(value, f"{source or node}: {name}")
    return out


def parse_override(text: str, nodes: tuple[str, ...]) -> tuple[str, str, Any]:
    """`NODE.PARAM=VALUE` (VALUE in YAML, as `ros2 run ... -p PARAM:=VALUE` reads it) as (node, name, value),
    checked against the schema: a node may silently ignore a parameter it does not declare, so an unknown one
    is an error here."""
    target, eq, raw = text.partition("=")
    node, dot, name = target.strip().partition(".")
    if not (eq and dot and node and name):
        raise ConfigError(f"{text!r}: expected NODE.PARAM=VALUE, e.g. detector.box_threshold=0.3")
    if node not in nodes:
        raise ConfigError(f"{text!r}: node must be one of {', '.join(nodes)}, got {node!r}")
    specs = {spec.name: spec for spec in NODE_PARAMS[node]}
    if name not in specs:
        raise ConfigError(f"{text!r}: node {node!r} has no parameter {name!r}; its parameters: {', '.join(specs)}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"{text!r}: value is not YAML: {err}") from None
    return node, name, specs[name].validate(value, f"{node}.{name}")


def load_config(*paths: str | Path) -> dict[str, dict[str, Any]]:
    """Read ROS 2 params files (later files override earlier ones, as repeated --params-file do) and
    return the validated parameters of every node of the package. Node keys may be plain (``detector``),
    absolute (``/detector``) or wildcarded (``/**/detector``); sections of other nodes are ignored."""
    found: dict[str, dict[str, Any]] = {}
    for path in map(Path, paths):
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read parameter file {str(path)!r}: {err}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: expected a mapping of node names to ros__parameters")
        for key, section in doc.items():
            node = str(key).rsplit("/", 1)[-1]
            if node not in NODE_PARAMS:
                continue
            if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
                raise ConfigError(f"{path}: {key}: expected a 'ros__parameters' mapping")
            merged = {**found.get(node, {}), **section["ros__parameters"]}
            validate_params(node, merged, f"{path.name}: {key}")
            found[node] = merged
    return {node: validate_params(node, found.get(node, {}), node) for node in NODE_PARAMS}


def config_dir() -> Path:
    """config/ of a source checkout, else share/dino_vla/config of the install."""
    import sys

    candidates = [Path(__file__).resolve().parent.parent / "config",
                  Path(sys.prefix) / "share" / "dino_vla" / "config"]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("dino_vla")) / "config")
    except Exception:  # no ament index: a plain-pip install
        pass
    for candidate in candidates:
        if (candidate / "perception.yaml").is_file():
            return candidate
    raise ConfigError("dino_vla's config/ directory was not found in the source checkout or the "
                      "install; pass --config explicitly")


def default_config_path() -> Path:
    return config_dir() / "perception.yaml"
