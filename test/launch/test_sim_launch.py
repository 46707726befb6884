"""`ros2 launch dino_vla sim.launch.py perception:=ground-truth` for real (loopback DDS, a free domain): the
start-up pick lifts the cup, then SIGINT ends the launch with every process exiting 0 within 10 s, also when
the launch was started with SIGINT ignored."""
from __future__ import annotations

import pytest

from support.ros2_launch import SIGINT_DISPOSITIONS, Launch, stop_with_sigint


@pytest.mark.parametrize("sigint", SIGINT_DISPOSITIONS)
def test_sim_launch_picks_the_cup_and_stops_on_sigint(launch_env, tmp_path, sigint):
    launch = Launch("sim.launch.py", ["perception:=ground-truth"], launch_env, tmp_path / "launch.log",
                    sigint_ignored=sigint == "ignored")
    try:
        picked = launch.wait_for(r"pick 'pick up the cup': (\w+)", 120)   # the start-up pick's result
        assert picked and picked[1] == "success", launch.tail()
        stop_with_sigint(launch, sigint)
    finally:
        launch.kill()
