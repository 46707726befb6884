"""Fixtures of the launch tests: the real `ros2 launch` of launch/*.py. `launch`, `launch_ros` and the ros2 CLI
are not on the package index; `make setup` installs them into .venv from ../shared/ros2/upstream where that
folder exists (CI clones it beside this repository). Where they are missing these tests are skipped, with one
line saying why. The product never needs them here: on a ROS 2 site they come with the distribution."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from support.ros2_launch import ROS2

HERE = Path(__file__).resolve().parent
NOT_INSTALLED = ("ros2 launch is not installed in this venv: `make setup` installs it where "
                 "../shared/ros2/upstream/install.sh exists")


def pytest_collection_modifyitems(items):
    """Like test/dds: the folder is the marker. These tests start nodes over real Fast DDS (dds) through
    ros2 launch (launch)."""
    installed = ROS2.is_file() and importlib.util.find_spec("launch_ros") is not None
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.launch)
            item.add_marker(pytest.mark.dds)
            if not installed:
                item.add_marker(pytest.mark.skip(reason=NOT_INSTALLED))


@pytest.fixture(scope="module")
def launch_env(dds_env) -> dict[str, str]:
    """What `ros2 launch` needs here: this venv as the ament prefix (the package's share/ and lib/), the
    loopback DDS profile on this module's free domain (dds_env), no model hub, MuJoCo offscreen."""
    return {**os.environ, **dds_env, "AMENT_PREFIX_PATH": sys.prefix,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "HF_HUB_OFFLINE": "1", "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
