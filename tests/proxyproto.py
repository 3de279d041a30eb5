"""PROXY protocol headers as HAProxy's ``send-proxy-v2`` sends them, for the tests."""

from __future__ import annotations

import ipaddress
import struct

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def header_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A PROXY v2 header (command PROXY, TCP) saying ``source`` connected to ``destination``."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = 0x11 if src.version == 4 else 0x21  # TCP over IPv4 / IPv6
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body
