"""CommandLimits: what the policy node may command (workspace box and table, gripper opening, setpoint speed
and yaw rate), on known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dino_vla.config import ConfigError, defaults
from dino_vla.geometry.grasp_planner import Workspace
from dino_vla.policy.limits import CommandLimits, yaw_difference
from dino_vla.types import Grasp

BOX = Workspace(frame="base_link", min_xyz=(-0.4, -0.3, 0.35), max_xyz=(0.4, 0.3, 0.8), table_height_m=0.40)
LIMITS = CommandLimits(BOX, max_opening_m=0.1, max_speed_mps=0.2, max_yaw_rate_rps=0.5)
FLOOR = BOX.finger_floor_m


def grasp(x=0.1, y=-0.1, z=0.5, yaw=0.3, width=0.05, frame="base_link") -> Grasp:
    return Grasp(np.array([x, y, z], np.float64), np.array([0.0, 0.0, -1.0]), yaw, width, 0.7, "cup", frame)


def test_a_grasp_inside_every_limit_is_unchanged():
    g = grasp()
    out, notes = LIMITS.clamp(g, grasp(x=0.12, yaw=0.25), dt_s=0.5)
    assert notes == []
    np.testing.assert_array_equal(out.position, g.position)
    assert (out.yaw, out.width, out.score, out.phrase, out.frame) == (g.yaw, g.width, g.score, g.phrase, g.frame)
    np.testing.assert_array_equal(out.approach, g.approach)


@pytest.mark.parametrize("axis, value, expected", [(0, 0.9, 0.4), (0, -1.0, -0.4), (1, 0.5, 0.3), (1, -0.31, -0.3),
                                                   (2, 1.2, 0.8)])
def test_position_is_clipped_into_the_workspace(axis, value, expected):
    position = [0.1, -0.1, 0.5]
    position[axis] = value
    out, notes = LIMITS.clamp(grasp(*position), None, dt_s=0.5)
    want = list(position)
    want[axis] = expected
    np.testing.assert_allclose(out.position, want)
    assert notes == [f"{'xyz'[axis]} {value:.3f} -> {expected:.3f} m (workspace)"]


def test_the_tcp_stays_above_the_table_even_where_the_box_reaches_below_it():
    out, notes = LIMITS.clamp(grasp(z=0.37), None, dt_s=0.5)
    assert out.position[2] == pytest.approx(FLOOR) and FLOOR > BOX.min_xyz[2]
    assert notes == [f"z 0.370 -> {FLOOR:.3f} m (above the table)"]


def test_every_clamp_is_named():
    out, notes = LIMITS.clamp(grasp(x=2.0, y=-2.0, z=0.0, width=0.5), None, dt_s=0.5)
    np.testing.assert_allclose(out.position, [0.4, -0.3, FLOOR])
    assert out.width == 0.1
    assert [n.split()[0] for n in notes] == ["x", "y", "z", "width"]
    assert notes[-1] == "width 0.500 -> 0.100 m (max opening)"


def test_width_is_clipped_into_zero_to_max_opening():
    out, notes = LIMITS.clamp(grasp(width=-0.01), None, 0.5)
    assert out.width == 0.0 and notes == ["width -0.010 -> 0.000 m (max opening)"]
    out, notes = LIMITS.clamp(grasp(width=0.1), None, 0.5)
    assert out.width == 0.1 and notes == []


def test_the_step_from_the_previous_setpoint_is_limited_to_max_speed_times_dt():
    previous = grasp(x=0.0, y=0.0, z=0.5)
    out, notes = LIMITS.clamp(grasp(x=0.32, y=0.24, z=0.5), previous, dt_s=0.5)   # 0.4 m away, 0.1 m allowed
    step = out.position - previous.position
    assert np.linalg.norm(step) == pytest.approx(0.1)
    np.testing.assert_allclose(step / np.linalg.norm(step), [0.8, 0.6, 0.0])  # straight toward the target
    assert notes == ["moved 0.100 of 0.400 m (max speed 0.2 m/s)"]
    # a longer interval allows a longer step
    out, notes = LIMITS.clamp(grasp(x=0.32, y=0.24, z=0.5), previous, dt_s=5.0)
    np.testing.assert_allclose(out.position, [0.32, 0.24, 0.5])
    assert notes == []


def test_the_step_is_taken_toward_the_clipped_target_so_the_setpoint_stays_in_the_box():
    rng = np.random.default_rng(4)
    previous = grasp(x=0.0, y=0.0, z=0.6)
    low, high = np.array([-0.4, -0.3, FLOOR]), np.array(BOX.max_xyz)
    for _ in range(300):
        target = grasp(*rng.uniform(-1.5, 1.5, 3), yaw=rng.uniform(-4, 4), width=rng.uniform(-0.2, 0.3))
        out, _ = LIMITS.clamp(target, previous, dt_s=rng.uniform(0.01, 2.0))
        assert np.all(out.position >= low - 1e-12) and np.all(out.position <= high + 1e-12)
        assert 0.0 <= out.width <= 0.1
        previous = out


def test_yaw_is_compared_modulo_pi():
    previous = grasp(yaw=0.1)
    # pi + 0.1 and 0.1 close the fingers along the same line: no turn at all
    out, notes = LIMITS.clamp(grasp(yaw=0.1 + math.pi), previous, dt_s=0.5)
    assert notes == [] and out.yaw == pytest.approx(0.1 + math.pi)
    # 0.1 -> pi - 0.1 is a turn of -0.2 rad, within 0.25 rad
    out, notes = LIMITS.clamp(grasp(yaw=math.pi - 0.1), previous, dt_s=0.5)
    assert notes == []


def test_the_turn_is_limited_to_max_yaw_rate_times_dt_the_short_way_round():
    previous = grasp(yaw=0.0)
    out, notes = LIMITS.clamp(grasp(yaw=1.0), previous, dt_s=0.5)
    assert out.yaw == pytest.approx(0.25) and notes == ["turned 0.250 of 1.000 rad (max yaw rate 0.5 rad/s)"]
    # pi - 1.0 is the same grasp as -1.0: turn the other way
    out, notes = LIMITS.clamp(grasp(yaw=math.pi - 1.0), previous, dt_s=0.5)
    assert out.yaw == pytest.approx(-0.25) and notes == ["turned 0.250 of 1.000 rad (max yaw rate 0.5 rad/s)"]


def test_yaw_difference_wraps_into_half_open_quarter_turns():
    for a in np.linspace(-7, 7, 57):
        for b in np.linspace(-7, 7, 29):
            d = yaw_difference(a, b)
            assert -math.pi / 2 <= d < math.pi / 2
            assert ((a - b - d) / math.pi) == pytest.approx(round((a - b - d) / math.pi), abs=1e-9)


@pytest.mark.parametrize("bad, match", [(dict(frame="camera_color_optical_frame"), "limits are in 'base_link'"),
                                        (dict(x=float("nan")), "non-finite"), (dict(width=float("inf")), "non-finite"),
                                        (dict(yaw=float("nan")), "non-finite")])
def test_grasps_that_cannot_be_bounded_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        LIMITS.clamp(grasp(**bad), None, dt_s=0.5)


@pytest.mark.parametrize("dt", [0.0, -0.1, float("nan")])
def test_dt_must_be_positive(dt):
    with pytest.raises(ValueError, match="dt_s"):
        LIMITS.clamp(grasp(), grasp(), dt_s=dt)


def test_limits_come_from_the_policy_node_parameters():
    params = defaults("policy")
    limits = CommandLimits.from_params(params)
    assert limits.workspace.frame == params["target_frame"]
    assert (limits.workspace.min_xyz, limits.workspace.max_xyz) == (params["workspace_min"], params["workspace_max"])
    assert limits.workspace.table_height_m == params["table_height_m"]
    assert (limits.max_opening_m, limits.max_speed_mps, limits.max_yaw_rate_rps) == (
        params["max_opening_m"], params["max_speed_mps"], params["max_yaw_rate_rps"])


@pytest.mark.parametrize("change, match", [
    (dict(workspace_min=(0.5, -0.3, 0.4)), "min_xyz < max_xyz"),
    (dict(workspace_max=(0.4, 0.3, 0.4)), "table"),
    (dict(table_height_m=1.0), "table"),
])
def test_inconsistent_parameters_are_a_config_error(change, match):
    with pytest.raises(ConfigError, match=match):
        CommandLimits.from_params({**defaults("policy"), **change})


@pytest.mark.parametrize("name", ["max_opening_m", "max_speed_mps", "max_yaw_rate_rps"])
@pytest.mark.parametrize("value", [0.0, -1.0, float("inf")])
def test_limits_must_be_positive(name, value):
    kwargs = dict(max_opening_m=0.1, max_speed_mps=0.2, max_yaw_rate_rps=0.5)
    with pytest.raises(ValueError, match=name):
        CommandLimits(BOX, **{**kwargs, name: value})
