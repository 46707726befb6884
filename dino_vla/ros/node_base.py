"""What the package's nodes share: parameters declared from the one schema and validated on change,
camera QoS, a main() with exit codes. No torch here: the geometric nodes (localiser, pick, sim) start without
it; the model nodes' base is ros/perception_node.py."""
from __future__ import annotations

import faulthandler
import signal
import sys
import threading
import time
from typing import Any, Callable, Sequence

import rclpy
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from dino_vla.config import NODE_PARAMS, ConfigError, ParamSpec, validate_params
from dino_vla.dds import DdsProfileError, require_profile_if_named
from dino_vla.ros.launcher import stop_with_launcher

# What the DDS part of a node's teardown (its entities, the context, the participant at exit) may take once the
# callbacks have ended: normally well under a second. Fast DDS can deadlock deleting a reader while its peers
# leave at the same moment (eProsima/Fast-DDS#6193); ros2 launch escalates to SIGTERM 5 s after SIGINT.
DDS_TEARDOWN_S = 4.0

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


class ReasonThrottle:
    """Once per reason per period: rclpy's throttle_duration_sec throttles per line of code, so a second,
    different reason from the same line within the period would never be logged. Reasons not seen for a
    period are forgotten, so reasons that carry numbers cannot grow the table without bound."""

    def __init__(self, period_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.period_s, self.clock = period_s, clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()   # callbacks of a multi-threaded node may report at once

    def allow(self, reason: str) -> bool:
        now = self.clock()
        with self._lock:
            if len(self._last) > 64:
                self._last = {r: t for r, t in self._last.items() if now - t < self.period_s}
            if now - self._last.get(reason, -float("inf")) < self.period_s:
                return False
            self._last[reason] = now
            return True


class _JoiningMultiThreadedExecutor(MultiThreadedExecutor):
    """rclpy 9's Executor.shutdown() destroys its guard condition without waiting for the callbacks still
    running (its wait is skipped once it has marked itself shut down); a worker that then signals that guard
    condition fails ("The following exception was never retrieved: cannot use Destroyable ..."). So the
    worker threads (its thread pool, `_executor`) are joined first."""

    def shutdown(self, timeout_sec: float | None = None, *, wait_for_threads: bool = True) -> bool:
        self._executor.shutdown(wait=True)
        return super().shutdown(timeout_sec, wait_for_threads=wait_for_threads)


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
        self._reasons = ReasonThrottle()

    def report(self, reason: str, context: str = "", level: str = "error", key: str | None = None) -> None:
        """Log why an input was not used, as one line `context: reason` at `level` (error or warning), once per
        reason per 5 s. What is throttled on is `key`, else `reason`: keep stamps and counters in `context`, or
        name the kind of reason in `key` when the reason itself carries them."""
        if self._reasons.allow(key or reason):
            line = " ".join((f"{context}: {reason}" if context else reason).split())
            # one call site per severity: rclpy refuses two severities from one
            if level == "warning":
                self.get_logger().warning(line)
            else:
                self.get_logger().error(line)

    def report_sync(self, kind: str, stream: str, sentence: str) -> None:
        """ApproximateTimeSync's on_notice: one line per kind of notice and stream per 5 s (its sentences carry
        stamps)."""
        self.report(sentence, level="warning", key=f"sync {kind} {stream}")

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

    def stop(self) -> None:
        """Asked to stop (SIGINT or SIGTERM): callbacks that wait for long end their waits here. Called once,
        before run_node waits for the running callbacks, while the node can still publish."""


def run_node(node_cls: type[ConfiguredNode], args: list[str] | None = None) -> int:
    """One node in this process: run_nodes."""
    return run_nodes((node_cls,), args)


def run_nodes(node_classes: Sequence[type[ConfiguredNode]], args: list[str] | None = None) -> int:
    """The nodes of `node_classes` in this process, on one executor (multi-threaded when there are several, so
    that one node's long callback does not hold the others'; each node's own callbacks still run one at a
    time). Exit codes: 0 clean shutdown, 1 model or parameter error (or a DDS teardown that hung for
    DDS_TEARDOWN_S, with every thread's stack on stderr), 2 unsafe DDS configuration.

    SIGINT and SIGTERM stop the node in this order: no new callbacks, the running ones end, then the node and
    the context go. rclpy's own handlers are not used: they shut the context down from their own thread at
    once, so a callback still running fails at its next publish ("publisher's context is invalid", exit 1).
    Under SIGINT a KeyboardInterrupt used to end the callback first, but not under SIGTERM (what ros2 launch
    sends a node still running 5 s after SIGINT) nor when SIGINT came inherited as ignored (`ros2 launch ... &`
    from a script: rclpy catches it all the same, Python raises nothing)."""
    name = "+".join(cls.STAGE for cls in node_classes)
    startup_errors = tuple({e for cls in node_classes for e in cls.STARTUP_ERRORS})
    try:
        require_profile_if_named()
    except DdsProfileError as err:
        print(f"[{name}] FATAL: {err}", file=sys.stderr)
        return 2
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    # while the node is built no callback runs yet, so a signal may simply cut that short (a model load can
    # take minutes)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    stop_with_launcher()   # after the handlers, so that the SIGINT it may send is caught
    nodes: list[ConfiguredNode] = []
    executor = None
    try:
        for cls in node_classes:
            nodes.append(cls())
        stop_requested = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop_requested.set())
        # a node whose callbacks wait on other callbacks (the pick action) needs more than one thread
        executor = _JoiningMultiThreadedExecutor(num_threads=max(4, len(nodes))) \
            if len(nodes) > 1 or any(cls.MULTI_THREADED for cls in node_classes) else SingleThreadedExecutor()
        for node in nodes:
            executor.add_node(node)
        while not stop_requested.is_set():
            executor.spin_once(timeout_sec=0.1)   # Python runs the signal handler when the wait returns
    except (ConfigError, *startup_errors) as err:
        rclpy.logging.get_logger(name).fatal(str(err))
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        # stopping already: a second signal (Ctrl-C pressed twice; a launch that stops the graph because
        # another node exited) must not kill the teardown, nor Python's own teardown, which would restore
        # SIGINT's default action for a Python handler but keeps an ignored signal ignored. SIGKILL still works.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        if executor is not None:
            for node in nodes:
                node.stop()
            executor.shutdown()   # the multi-threaded one waits for its running callbacks here
        # past this point only rclpy and DDS run: a hang there must not outlive the launch's patience, and
        # must say where it was (every thread's stack on stderr, then exit 1). Armed until the process
        # ends, because the participant itself goes at interpreter exit; nodes run as their own processes.
        faulthandler.dump_traceback_later(DDS_TEARDOWN_S, exit=True)
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
