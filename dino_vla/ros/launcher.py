"""The local starter: a node graph as processes where `ros2 launch` does not exist (`dino-vla launch`,
`sim-pick`, the tests), from the same graph description and config as the launch files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dino_vla.graph import (PERCEPTION_GRAPH, CameraTopics, NodeSpec, composed_ros_arguments, parameter_overrides,
                            ros_arguments)

# the name of the one process that holds the model nodes under start_graph(one_process=True)
COMPOSED_PROCESS = "perception"

# set by start_graph for its node processes; `ros2 launch` sites do not set it
LAUNCHER_PID_ENV = "DINO_VLA_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1


def stop_with_launcher() -> None:
    """In a node process started by start_graph: have the kernel send SIGINT (a clean rclpy shutdown) when
    the launcher dies, even by SIGKILL, so no orphan node keeps publishing or commanding on the domain."""
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if not launcher or not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGINT)
    if os.getppid() != int(launcher):   # it died before the request was in place
        os.kill(os.getpid(), signal.SIGINT)


@dataclass
class RunningGraph:
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def failed(self) -> tuple[str, int] | None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                return name, proc.returncode
        return None

    def stop(self, timeout_s: float = 10.0) -> None:
        # SIGINT, not SIGKILL: rclpy shuts down cleanly and Fast DDS tells its peers the participant left
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for proc in self.processes.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_graph(params_files: list[str | Path], env: dict[str, str], *, camera: CameraTopics = CameraTopics(),
                namespace: str = "", instruction: str | None = None, device: str | None = None,
                models: dict[str, str] | None = None, node_params: dict[str, dict] | None = None,
                specs: tuple[NodeSpec, ...] = PERCEPTION_GRAPH, stdout=None, stderr=None,
                configure_timeout_s: float = 300.0, one_process: bool = False) -> RunningGraph:
    """One process per node, the managed ones configured (their models loaded side by side) and activated
    before this returns; LifecycleError (the graph stopped) when one cannot be. The processes get SIGINT when
    the thread that called this ends (Linux's parent-death signal follows the creating thread), so call it
    from the thread that lives as long as the graph. This process's environment takes `env`'s DDS settings
    (its own participant must use them). With `one_process` the model nodes of `specs` (features, detector,
    segmenter) share one process, COMPOSED_PROCESS (ros/perception_process.py)."""
    graph = RunningGraph()
    files = [str(p) for p in params_files]
    composed = [spec for spec in specs if spec in PERCEPTION_GRAPH] if one_process else []
    commands = {spec.name: [sys.executable, "-m", spec.module, *ros_arguments(
        spec, files, camera, namespace, parameter_overrides(spec, instruction, device, models, node_params))]
        for spec in specs if spec not in composed}
    if composed:
        commands[COMPOSED_PROCESS] = [
            sys.executable, "-m", "dino_vla.ros.perception_process", *(spec.name for spec in composed),
            *composed_ros_arguments(composed, files, camera, namespace, {
                spec.name: parameter_overrides(spec, instruction, device, models, node_params) for spec in composed})]
    for name, cmd in commands.items():
        graph.processes[name] = subprocess.Popen(
            cmd, env={**os.environ, **env, LAUNCHER_PID_ENV: str(os.getpid())}, stdout=stdout, stderr=stderr)
    managed = [spec for spec in specs if spec.managed]
    if managed:
        os.environ.update(env)
        try:
            activate_nodes(graph, managed, namespace, configure_timeout_s)
        except BaseException:
            graph.stop()
            raise
    return graph


def activate_nodes(graph: RunningGraph, specs: list[NodeSpec], namespace: str, configure_timeout_s: float) -> None:
    """Configure every managed node of `specs` at once, then activate them, from a participant of its own."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from dino_vla.ros.lifecycle_client import LifecycleClient, change_all

    def alive() -> str | None:
        failed = graph.failed()
        return f"node {failed[0]} exited with code {failed[1]}" if failed else None

    prefix = "/" + namespace.strip("/") if namespace.strip("/") else ""
    context = rclpy.Context()
    # the caller's own signal handling stays in place (Ctrl-C during a long model load stops the graph)
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(f"dino_vla_starter_{os.getpid()}", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        clients = [LifecycleClient(node, executor, f"{prefix}/{spec.name}") for spec in specs]
        change_all(clients, "configure", configure_timeout_s, alive)
        change_all(clients, "activate", 30.0, alive)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
