"""`dino-vla launch`: start the perception graph as processes where `ros2 launch` does not exist,
from the same graph description and config, on the checked loopback DDS profile."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dino_vla.dds import DdsProfileError, loopback_environment
from dino_vla.graph import PERCEPTION_GRAPH, CameraTopics, NodeSpec, parameter_overrides, ros_arguments

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
                specs: tuple[NodeSpec, ...] = PERCEPTION_GRAPH, stdout=None, stderr=None) -> RunningGraph:
    """One process per node. They get SIGINT when the thread that called this ends (Linux's parent-death
    signal follows the creating thread), so call it from the thread that lives as long as the graph."""
    graph = RunningGraph()
    for spec in specs:
        overrides = parameter_overrides(spec, instruction, device, models, node_params)
        cmd = [sys.executable, "-m", spec.module,
               *ros_arguments(spec, [str(p) for p in params_files], camera, namespace, overrides)]
        graph.processes[spec.name] = subprocess.Popen(
            cmd, env={**os.environ, **env, LAUNCHER_PID_ENV: str(os.getpid())}, stdout=stdout, stderr=stderr)
    return graph


def run_graph(args) -> int:
    from dino_vla.cli import _choose, _config
    from dino_vla.config import default_config_path

    try:
        env = loopback_environment(args.dds_profile)
    except DdsProfileError as err:
        print(f"dino-vla launch: {err}", file=sys.stderr)
        return 2
    params_file = args.config or str(default_config_path())
    choice = _choose(args, _config(args), tuple(spec.name for spec in PERCEPTION_GRAPH))
    models = {name: p["model"] for name, p in choice.params.items()} if choice.random_weights else None
    graph = start_graph([params_file], env, camera=CameraTopics(image=args.image_topic), namespace=args.namespace,
                        instruction=args.instruction, device=args.device, models=models)
    print(f"dino-vla launch: started {', '.join(graph.processes)} on {args.image_topic} "
          f"(DDS profile {env['FASTDDS_DEFAULT_PROFILES_FILE']}); Ctrl-C stops them", flush=True)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            failed = graph.failed()
            if failed:
                print(f"dino-vla launch: node {failed[0]} exited with code {failed[1]}; stopping the graph",
                      file=sys.stderr)
                return failed[1] or 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        graph.stop()
    return 0
