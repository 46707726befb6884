"""Choosing a free ROS domain (dino_vla/dds.py) and the commands' --domain-id, without ROS: a domain with a
socket bound to one of its RTPS ports, or claimed by another starter, is never chosen."""
from __future__ import annotations

import argparse
import random
import socket

import pytest

from dino_vla.cli import build_parser
from dino_vla.commands.common import on_ros_domain
from dino_vla.dds import (DOMAIN_ID_MAX, FREE_DOMAIN_IDS, DomainError, bound_udp_ports, claim_free_domain,
                          domain_ports, parse_domain_id)


def unused_domains(count: int) -> list[int]:
    """Domains of the free range without a bound port right now."""
    bound = bound_udp_ports()
    found = [d for d in FREE_DOMAIN_IDS if bound.isdisjoint(domain_ports(d))]
    assert len(found) >= count, "too few unused ROS domains on this host for the test"
    return random.sample(found, count)


def test_rtps_ports_of_a_domain():
    assert domain_ports(0) == range(7400, 7650) and domain_ports(1).start == 7650
    assert domain_ports(DOMAIN_ID_MAX).start + 11 < 65536 < domain_ports(DOMAIN_ID_MAX + 1).start
    # the free range ends where the first participants' unicast ports (offsets 10, 11) still stay below Linux's
    # ephemeral ports
    assert (min(FREE_DOMAIN_IDS), max(FREE_DOMAIN_IDS)) == (1, 101) and domain_ports(101).start + 11 < 32768


def test_a_domain_with_a_bound_discovery_port_is_never_chosen(tmp_path):
    busy, free = unused_domains(2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as occupant:
        occupant.bind(("127.0.0.1", domain_ports(busy).start + 10))   # participant 0's discovery (metatraffic) port
        for seed in range(20):
            with claim_free_domain([busy, free], lock_dir=tmp_path, rng=random.Random(seed)) as claim:
                assert claim.domain_id == free
        with pytest.raises(DomainError, match=r"no free ROS domain .* choose one with --domain-id"):
            claim_free_domain([busy], lock_dir=tmp_path)
    with claim_free_domain([busy], lock_dir=tmp_path) as claim:   # free again once the socket is closed
        assert claim.domain_id == busy


def test_a_claimed_domain_is_skipped_until_it_is_released(tmp_path):
    (domain,) = unused_domains(1)
    first = claim_free_domain([domain], lock_dir=tmp_path)
    with pytest.raises(DomainError):
        claim_free_domain([domain], lock_dir=tmp_path)
    first.release()
    with claim_free_domain([domain], lock_dir=tmp_path) as second:
        assert second.domain_id == domain


@pytest.mark.parametrize("text", ["0", "7", " 42 ", str(DOMAIN_ID_MAX)])
def test_valid_domain_ids(text):
    assert parse_domain_id(text) == int(text)


@pytest.mark.parametrize("text", ["-1", str(DOMAIN_ID_MAX + 1), "seven", "1.5", ""])
def test_invalid_domain_ids(text):
    with pytest.raises(ValueError, match=f"a ROS domain id is an integer in 0..{DOMAIN_ID_MAX}, got {text!r}"):
        parse_domain_id(text)


@pytest.mark.parametrize("command", ["sim-pick", "launch"])
@pytest.mark.parametrize("value", ["-1", "233", "seven", "1.5", "ENV"])
def test_the_commands_reject_an_invalid_domain_id(command, value, capsys):
    with pytest.raises(SystemExit) as exit_code:
        build_parser().parse_args([command, "--domain-id", value])
    assert exit_code.value.code == 2
    assert (f"argument --domain-id: a ROS domain id is an integer in 0..232, got {value!r} (or 'free' or 'env')"
            in capsys.readouterr().err)


@pytest.mark.parametrize("command", ["sim-pick", "launch"])
def test_the_commands_default_to_a_free_domain(command):
    assert build_parser().parse_args([command]).domain_id == "free"
    assert build_parser().parse_args([command, "--domain-id", "0"]).domain_id == 0
    assert build_parser().parse_args([command, "--domain-id", "env"]).domain_id == "env"


def args_of(domain_id: str | int) -> argparse.Namespace:
    return argparse.Namespace(command="sim-pick", domain_id=domain_id)


def test_a_free_domain_is_said_and_held_for_the_block(capsys, monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", "0")   # ignored unless --domain-id env
    with on_ros_domain(args_of("free"), {"A": "1"}) as env:
        domain = int(env["ROS_DOMAIN_ID"])
        assert env["A"] == "1" and domain in FREE_DOMAIN_IDS
        assert capsys.readouterr().err == f"ROS domain {domain} (free; --domain-id to choose)\n"
        with pytest.raises(DomainError):
            claim_free_domain([domain]).release()
    claim_free_domain([domain]).release()


def test_a_given_domain_or_the_environment_s(capsys, monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", "17")
    with on_ros_domain(args_of(0), {}) as env:
        assert env == {"ROS_DOMAIN_ID": "0"}
    with on_ros_domain(args_of("env"), {}) as env:
        assert env == {"ROS_DOMAIN_ID": "17"}
    assert capsys.readouterr().err.splitlines() == ["ROS domain 0 (--domain-id 0)",
                                                    "ROS domain 17 (ROS_DOMAIN_ID from the environment)"]


@pytest.mark.parametrize("value, why", [
    (None, "--domain-id env: ROS_DOMAIN_ID is not set"),
    ("300", "--domain-id env: ROS_DOMAIN_ID: a ROS domain id is an integer in 0..232, got '300'")])
def test_domain_id_env_refuses_an_unusable_environment(value, why, capsys, monkeypatch):
    if value is None:
        monkeypatch.delenv("ROS_DOMAIN_ID", raising=False)
    else:
        monkeypatch.setenv("ROS_DOMAIN_ID", value)
    with pytest.raises(SystemExit) as exit_code, on_ros_domain(args_of("env"), {}):
        pass
    assert exit_code.value.code == 2 and capsys.readouterr().err == f"dino-vla sim-pick: {why}\n"
