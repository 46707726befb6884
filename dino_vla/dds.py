"""Keep DDS on loopback, and on a ROS domain of its own, where this project starts nodes itself.

Fast DDS reads the profile named by FASTDDS_DEFAULT_PROFILES_FILE; a missing or unparsable file only
logs an XML error and the participant falls back to LAN multicast. So the file is checked before any
node starts, and anything wrong is an error, never a fallback. Another graph on the same host (a second
`sim-pick`, someone's robot) would answer this one's goals on a shared domain, so the starters claim a
domain that nobody here uses (claim_free_domain).
"""
from __future__ import annotations

import fcntl
import os
import random
import socket
import struct
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable, Iterator

PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
DOMAIN_ENV = "ROS_DOMAIN_ID"
_NS = "{http://www.eprosima.com}"


class DdsProfileError(RuntimeError):
    pass


def default_profile_path() -> Path:
    from dino_vla.config import config_dir

    return config_dir() / "fastdds_loopback.xml"


def check_loopback_profile(path: str | Path) -> Path:
    """The profile must exist, parse, disable the builtin (multicast) transports of the default
    participant, and whitelist every UDP transport to 127.0.0.1 only."""
    path = Path(path)
    if not path.is_file():
        raise DdsProfileError(f"Fast DDS profile {str(path)!r} does not exist; refusing to start nodes "
                              f"that would fall back to LAN multicast")
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise DdsProfileError(f"Fast DDS profile {str(path)!r} is unreadable ({err}); refusing to start "
                              f"nodes that would fall back to LAN multicast") from None
    participants = [p for p in root.iter(f"{_NS}participant") if p.get("is_default_profile") == "true"]
    builtin = [p.findtext(f"{_NS}rtps/{_NS}useBuiltinTransports") for p in participants]
    if not participants or any((b or "").strip().lower() != "false" for b in builtin):
        raise DdsProfileError(f"{path}: the default participant profile must set useBuiltinTransports "
                              f"to false (the builtin transports multicast to the LAN)")
    for transport in root.iter(f"{_NS}transport_descriptor"):
        if (transport.findtext(f"{_NS}type") or "").strip() in ("UDPv4", "UDPv6", "TCPv4", "TCPv6"):
            allowed = [a.text.strip() for a in transport.iter(f"{_NS}address") if a.text]
            if not allowed or any(a not in ("127.0.0.1", "::1") for a in allowed):
                raise DdsProfileError(f"{path}: transport {transport.findtext(f'{_NS}transport_id')!r} "
                                      f"is not whitelisted to loopback only (addresses {allowed})")
    return path


def loopback_environment(profile: str | Path | None = None, domain_id: int | None = None) -> dict[str, str]:
    """Variables that put every node started with them on the checked loopback profile."""
    path = check_loopback_profile(profile or default_profile_path())
    env = {PROFILE_ENV: str(path.resolve()),
           # the only discovery range under which rmw_fastrtps leaves the profile's locators intact
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT",
           "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"}
    if domain_id is not None:
        env[DOMAIN_ENV] = str(domain_id)
    return env


def require_profile_if_named() -> None:
    """Node start-up guard: a profile that is named but broken would silently mean multicast."""
    named = os.environ.get(PROFILE_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise DdsProfileError(f"{PROFILE_ENV}={named!r} does not exist; refusing to start a node that "
                                  f"would fall back to LAN multicast")
        try:
            ET.parse(path)
        except (ET.ParseError, OSError) as err:
            raise DdsProfileError(f"{PROFILE_ENV}={named!r} is unreadable ({err}); refusing to start a "
                                  f"node that would fall back to LAN multicast") from None


def _udp_table(pid: int | str) -> Iterator[tuple[str, str, int]]:
    """(socket inode, local address, port) of every UDP socket in the network namespace of `pid`, IPv4 and
    IPv6."""
    for table, family in (("udp", socket.AF_INET), ("udp6", socket.AF_INET6)):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(addr_hex)
            # /proc prints the address as host-order 32-bit words
            words = struct.unpack(f"<{len(raw) // 4}I", raw)
            packed = struct.pack(f">{len(words)}I", *words)
            yield fields[9], socket.inet_ntop(family, packed), int(port_hex, 16)


def udp_sockets(pid: int | str = "self") -> list[tuple[str, int]]:
    """(local address, port) of every UDP socket the process owns, IPv4 and IPv6."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return [(address, port) for inode, address, port in _udp_table(pid) if inode in inodes]


def bound_udp_ports() -> set[int]:
    """The local port of every UDP socket on this host (this network namespace), whoever owns it."""
    return {port for _, _, port in _udp_table("self")}


# ---- ROS domains ---------------------------------------------------------------------------------------------
# RTPS 2.5 section 9.6.1.1 maps a domain to UDP ports: PB + DG * domain + offset, PB = 7400, DG = 250, with
# offsets d0 = 0 (discovery multicast), d2 = 1 (user multicast), d1 = 10 and d3 = 11 (discovery and user
# unicast) + PG = 2 per participant. So domain d owns the ports [7400 + 250 d, 7400 + 250 (d + 1)), and 232 is
# the last domain whose first participant's ports stay below 65536.
PORT_BASE, DOMAIN_GAIN = 7400, 250
DOMAIN_ID_MAX = 232
# Chosen among 1..101: 0 is where every ROS 2 program lands by default, and 101 is the highest domain whose
# ports stay below Linux's ephemeral range (32768..60999), the range the ROS 2 docs recommend on Linux.
FREE_DOMAIN_IDS = range(1, 102)


class DomainError(RuntimeError):
    pass


def parse_domain_id(text: str) -> int:
    """A ROS domain id, an integer in 0..232; ValueError saying so otherwise."""
    try:
        domain_id = int(text.strip())
    except (ValueError, AttributeError):
        domain_id = -1
    if not 0 <= domain_id <= DOMAIN_ID_MAX:
        raise ValueError(f"a ROS domain id is an integer in 0..{DOMAIN_ID_MAX}, got {text!r}")
    return domain_id


def domain_ports(domain_id: int) -> range:
    """The UDP ports RTPS gives domain `domain_id` (all participants, discovery and user traffic)."""
    first = PORT_BASE + DOMAIN_GAIN * domain_id
    return range(first, first + DOMAIN_GAIN)


LOCK_FILE_NAME = "dino_vla-ros-domain-{}.lock"


def domain_lock_path(domain_id: int | str, lock_dir: str | Path | None = None) -> Path:
    return Path(lock_dir or tempfile.gettempdir()) / LOCK_FILE_NAME.format(domain_id)


class DomainClaim:
    """A ROS domain that this process chose as free and holds (an flock on its lock file) until release()
    or exit, even by SIGKILL, when the kernel drops the lock."""

    def __init__(self, domain_id: int, lock_fd: int):
        self.domain_id = domain_id
        self._lock_fd = lock_fd

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)   # closing the descriptor drops the flock
            self._lock_fd = -1

    def __enter__(self) -> "DomainClaim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_free_domain(candidates: Iterable[int] = FREE_DOMAIN_IDS, lock_dir: str | Path | None = None,
                      rng: random.Random | None = None) -> DomainClaim:
    """A ROS domain nobody on this host uses: no UDP socket bound to any of its RTPS ports, and not claimed by
    another starter of this package. Tried in random order; DomainError when every candidate is taken.

    The race: two starters could both see a domain without sockets and take it, since a graph binds its ports
    only seconds later, once its nodes are up. Each starter therefore takes an exclusive flock on a per-domain
    lock file before it checks the ports, and holds it for its graph's lifetime: a second starter skips a
    locked domain at once. A lock, unlike a check after the participants are up, leaves no window and needs no
    rclpy here; the kernel drops it when the holder dies, so a crash leaves no stale claim. Graphs started by
    other programs take no lock, but their bound ports show once they run; the random order makes picking
    the domain of one that is just starting unlikely."""
    order = list(candidates)
    (rng or random.SystemRandom()).shuffle(order)
    for domain_id in order:
        try:
            # read-only is enough for flock, so a lock file another user created can be locked too
            fd = os.open(domain_lock_path(domain_id, lock_dir), os.O_RDONLY | os.O_CREAT, 0o666)
        except OSError:   # e.g. /tmp's protected_regular refusing another user's file: treat it as held
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        if bound_udp_ports().isdisjoint(domain_ports(domain_id)):
            return DomainClaim(domain_id, fd)
        os.close(fd)
    tried = f"{min(order)}..{max(order)}" if order else "no candidates"
    raise DomainError(f"no free ROS domain ({tried}): each has UDP sockets bound to its RTPS ports "
                      f"or is held by another dino-vla starter (lock files {domain_lock_path('*', lock_dir)}); "
                      f"choose one with --domain-id")
