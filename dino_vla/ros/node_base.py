"""What the package's nodes share: parameters declared from the one schema and validated on change,
camera QoS, a main() with exit codes. No torch here: the geometric nodes (localiser, pick, sim) start without
it; the model nodes' base is ros/perception_node.py."""
from __future__ import annotations

import sys
from typing import Any

import rclpy
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from dino_vla.config import NODE_PARAMS, ConfigError, ParamSpec, validate_params
from dino_vla.dds import DdsProfileError, require_profile_if_named
from dino_vla.ros.launcher import stop_with_launcher

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
          tuple: ParameterType.PARAMETER_DOUBLE_ARRAY}


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    d = ParameterDescriptor(name=spec.name, type=_TYPES[type(spec.default)], description=spec.description,
                            read_only=spec.read_only)
    if spec.range is not None and isinstance(spec.default, float):
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]),
                                                     to_value=float(spec.range[1]), step=0.0)]
    elif spec.range is not None:
        d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
    if spec.choices:
        d.additional_constraints = "one of: " + ", ".join(spec.choices)
    elif spec.pattern:
        d.additional_constraints = f"matches {spec.pattern}"
    return d


def camera_qos(reliability: str, depth: int = 1) -> QoSProfile:
    """Sensor-data style camera QoS. Depth 1 by default: inference is slower than cameras, so keep only
    the latest frame, never a queue of stale ones."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort"
                      else ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


class ConfiguredNode(Node):
    """A node whose parameters are declared from config.NODE_PARAMS[STAGE] (descriptions, ranges,
    read-only) and validated again on every run-time change."""

    STAGE = ""
    MULTI_THREADED = False
    # errors of start-up (besides ConfigError) that mean "cannot run as configured": logged FATAL, exit 1
    STARTUP_ERRORS: tuple[type[Exception], ...] = ()

    def __init__(self, **kwargs):
        super().__init__(self.STAGE, **kwargs)
        self._specs = {spec.name: spec for spec in NODE_PARAMS[self.STAGE]}
        for spec in self._specs.values():
            default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
            self.declare_parameter(spec.name, default, _descriptor(spec))
        self.params = validate_params(self.STAGE, {n: self.get_parameter(n).value for n in self._specs},
                                      f"node {self.get_name()}")
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _on_set_parameters(self, changes) -> SetParametersResult:
        try:
            updated = {p.name: self._specs[p.name].validate(p.value) for p in changes if p.name in self._specs}
            self.apply_parameters(updated)
        except (ConfigError, ValueError) as err:
            return SetParametersResult(successful=False, reason=str(err))
        self.params.update(updated)
        return SetParametersResult(successful=True)

    def apply_parameters(self, updated: dict[str, Any]) -> None:
        """Subclasses apply run-time changes here (raise ValueError to reject them)."""


def run_node(node_cls: type[ConfiguredNode], args: list[str] | None = None) -> int:
    """Exit codes: 0 clean shutdown, 1 model or parameter error, 2 unsafe DDS configuration."""
    try:
        require_profile_if_named()
    except DdsProfileError as err:
        print(f"[{node_cls.STAGE}] FATAL: {err}", file=sys.stderr)
        return 2
    rclpy.init(args=args if args is not None else sys.argv)
    stop_with_launcher()   # after init, so that the SIGINT it may send finds rclpy's handler
    node = None
    try:
        node = node_cls()
        # a node whose callbacks wait on other callbacks (the pick action) needs more than one thread
        rclpy.spin(node, executor=MultiThreadedExecutor(num_threads=4) if node_cls.MULTI_THREADED else None)
    except (ConfigError, *node_cls.STARTUP_ERRORS) as err:
        rclpy.logging.get_logger(node_cls.STAGE).fatal(str(err))
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
