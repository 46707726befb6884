"""The real `ros2 launch` as the launch tests start it: its own process group (so the test can signal the
whole graph, as a terminal's Ctrl-C does, and never leaves a node behind), optionally with SIGINT ignored
(what a non-interactive shell does to `ros2 launch ... &`), its output and its nodes' in one log file."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROS2 = Path(sys.executable).parent / "ros2"
STOP_S = 10.0
SIGINT_DISPOSITIONS = ("default", "ignored")
STARTED = re.compile(r"\[INFO\] \[([\w-]+)\]: process started with pid \[(\d+)\]")
FINISHED = re.compile(r"process has finished cleanly \[pid (\d+)\]")
DIED = re.compile(r"process has died \[pid (\d+), exit code (-?\d+)")


class Launch:
    """`ros2 launch dino_vla FILE ARGS...` running in the background."""

    def __init__(self, launch_file: str, arguments: list[str], env: dict[str, str], log: Path,
                 sigint_ignored: bool = False):
        self.log = log
        # stdin not a terminal: ros2 launch is non-interactive and forwards its SIGINT to the nodes itself
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [str(ROS2), "launch", "dino_vla", launch_file, *arguments], env=env, cwd=log.parent,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, chars: int = 4000) -> str:
        return self.text()[-chars:]

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match | None:
        """The first match of `pattern` in the log, waiting up to timeout_s (None: not there, or the launch
        ended without it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = re.search(pattern, self.text())
            if found or time.monotonic() > deadline or self.process.poll() is not None:
                return found or re.search(pattern, self.text())
            time.sleep(0.2)

    def nodes(self) -> dict[int, str]:
        """pid -> launch's name of every process it started (e.g. sim_node-1)."""
        return {int(pid): name for name, pid in STARTED.findall(self.text())}

    def exit_codes(self) -> dict[int, int]:
        """pid -> exit code of every process the launch saw end."""
        text = self.text()
        return {**{int(pid): 0 for pid in FINISHED.findall(text)},
                **{int(pid): int(code) for pid, code in DIED.findall(text)}}

    def wait(self, timeout_s: float) -> float | None:
        """Seconds until the launch process exited, or None if it still runs after timeout_s."""
        start = time.monotonic()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None
        return time.monotonic() - start

    def kill(self) -> None:
        """Whatever is left of the group: SIGINT first (Fast DDS frees its shared memory), then SIGKILL."""
        for sig, grace_s in ((signal.SIGINT, 10.0), (signal.SIGKILL, 0.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and group_alive(self.process.pid):
                time.sleep(0.2)
        self.process.wait()


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies waiting for their parent are not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_with_sigint(launch: Launch, sigint: str) -> float:
    """SIGINT as a user sends it; asserts that every process exits 0 within STOP_S and returns the seconds
    until the last one had.

    SIGINT default: to the launch process, which (non-interactive) forwards it to its nodes. SIGINT ignored, as
    for `ros2 launch ... &` from a script: the launch process keeps ignoring it (Python installs no handler for
    a signal inherited ignored, and launch's signal handling goes through Python's), so SIGINT goes to the
    process group, as a terminal's Ctrl-C does: every node must still stop cleanly, and the launch ends when
    they have."""
    nodes = launch.nodes()
    assert nodes and launch.process.poll() is None, launch.tail()
    start = time.monotonic()
    if sigint == "default":
        launch.process.send_signal(signal.SIGINT)
    else:
        os.killpg(launch.process.pid, signal.SIGINT)
    assert launch.wait(STOP_S) is not None, f"the launch still runs {STOP_S:g} s after SIGINT:\n{launch.tail()}"
    while group_alive(launch.process.pid) and time.monotonic() - start < STOP_S:
        time.sleep(0.05)
    took = time.monotonic() - start
    assert not group_alive(launch.process.pid), f"a node outlived its launch:\n{launch.tail()}"
    codes = launch.exit_codes()
    assert {name: codes.get(pid) for pid, name in nodes.items()} == {name: 0 for name in nodes.values()}, \
        launch.tail()
    assert launch.process.returncode == 0 and took < STOP_S, launch.tail()
    print(f"\nshutdown, SIGINT {sigint}: {', '.join(sorted(nodes.values()))} all exited 0 in {took:.2f} s")
    return took
