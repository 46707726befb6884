"""The one parameter schema of the perception nodes. Nodes declare their ROS parameters from it, and the
CLI and benchmarks read the same YAML file (ROS 2 params-file format) through it."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dino_vla.models import detector, features, segmenter


class ConfigError(ValueError):
    """A parameter file or value that the nodes would reject."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: bool | int | float | str
    description: str
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    pattern: str | None = None
    read_only: bool = False

    def validate(self, value: Any, where: str = "") -> Any:
        where = where or self.name
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


def _common(default_model: str) -> tuple[ParamSpec, ...]:
    return (
        ParamSpec("model", default_model, "Hugging Face hub id or local directory (save_pretrained, "
                  "safetensors) of the model; loaded at start-up", pattern=r"\S(.*\S)?", read_only=True),
        ParamSpec("device", "auto", "torch device: auto (CUDA when present), cpu, cuda or cuda:N",
                  pattern=r"auto|cpu|cuda(:\d+)?", read_only=True),
        ParamSpec("dtype", "auto", "weights/activations dtype; auto = float16 on CUDA, float32 on CPU",
                  choices=("auto", "float32", "float16", "bfloat16"), read_only=True),
        ParamSpec("torch_threads", 0, "CPU threads this node's torch may use; 0 = torch's default (all "
                  "cores). Set it when several model nodes share one CPU, or they slow each other down",
                  range=(0, 256), read_only=True),
        ParamSpec("reliability", "best_effort", "QoS reliability of the camera subscription "
                  "(best_effort = sensor data QoS; reliable for bag replay or reliable publishers)",
                  choices=("best_effort", "reliable"), read_only=True),
        ParamSpec("publish_debug_image", True, "publish an annotated image on ~/debug_image"),
    )


NODE_PARAMS: dict[str, tuple[ParamSpec, ...]] = {
    "features": _common(features.DEFAULT_MODEL),
    "detector": _common(detector.DEFAULT_MODEL) + (
        ParamSpec("instruction", "pick up the cup", "what to look for; changeable at run time here or "
                  "on the instruction topic"),
        ParamSpec("box_threshold", 0.35, "minimum box score kept", range=(0.0, 1.0)),
        ParamSpec("text_threshold", 0.25, "minimum token score for a box to be labelled with a phrase",
                  range=(0.0, 1.0)),
        ParamSpec("nms_iou", 0.5, "IoU above which overlapping boxes of one phrase are suppressed",
                  range=(0.0, 1.0)),
        ParamSpec("max_detections", 20, "at most this many boxes per image, best first", range=(1, 900)),
    ),
    "segmenter": _common(segmenter.DEFAULT_MODEL) + (
        ParamSpec("image_cache_size", 30, "recent images kept to pair with detections by stamp; must "
                  "cover camera rate x detector latency (30 = 1 s at 30 Hz)", range=(1, 300), read_only=True),
    ),
}


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


def load_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a ROS 2 params file and return the validated parameters of every perception node.
    Node keys may be plain (``detector``), absolute (``/detector``) or wildcarded (``/**/detector``)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read parameter file {str(path)!r}: {err}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of node names to ros__parameters")
    found: dict[str, dict[str, Any]] = {}
    for key, section in doc.items():
        node = str(key).rsplit("/", 1)[-1]
        if node not in NODE_PARAMS:
            continue  # parameters of other nodes may share the file
        if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
            raise ConfigError(f"{path}: {key}: expected a 'ros__parameters' mapping")
        found[node] = validate_params(node, section["ros__parameters"], f"{path.name}: {key}")
    return {node: found.get(node, defaults(node)) for node in NODE_PARAMS}


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
