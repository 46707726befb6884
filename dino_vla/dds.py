"""Keep DDS on loopback where this project starts nodes itself.

Fast DDS reads the profile named by FASTDDS_DEFAULT_PROFILES_FILE; a missing or unparsable file only
logs an XML error and the participant falls back to LAN multicast. So the file is checked before any
node starts, and anything wrong is an error, never a fallback.
"""
from __future__ import annotations

import os
import socket
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
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
        env["ROS_DOMAIN_ID"] = str(domain_id)
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
    found = []
    for table, family in (("udp", socket.AF_INET), ("udp6", socket.AF_INET6)):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] not in inodes:
                continue
            addr_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(addr_hex)
            # /proc prints the address as host-order 32-bit words
            words = struct.unpack(f"<{len(raw) // 4}I", raw)
            packed = struct.pack(f">{len(words)}I", *words)
            found.append((socket.inet_ntop(family, packed), int(port_hex, 16)))
    return found
