"""Crafted sleeve traffic: DATA frames around hand-made IPv4/UDP packets and heartbeat acks (and
VXLAN datagrams for the fast path's port),
built with overlay/frame.py's encoders, sent from the stranger host either from its own address
or with a forged outer source (a raw socket with IP_HDRINCL: the underlay bridge forwards it)."""

from __future__ import annotations

import ipaddress
import socket
import struct

from overlay import frame
from overlay.icmp import checksum
from tests.netns.hostile.host import StrangerHost

PORT = 6783
IPV4 = struct.Struct("!BBHHHBBH4s4s")
UDP = struct.Struct("!HHHH")
PROTO_UDP = 17
VNET_NONE = bytes(frame.VNET_HEADER_SIZE)  # no offload: flags 0, gso_type 0


def ipv4(source: str, destination: str, protocol: int, payload: bytes, ident: int = 1) -> bytes:
    """An IPv4 packet (header checksum set, TTL 64, DF clear) carrying ``payload``."""
    header = bytearray(IPV4.pack(0x45, 0, IPV4.size + len(payload), ident, 0, 64, protocol, 0,
                                 _packed(source), _packed(destination)))  # fmt: skip
    struct.pack_into("!H", header, 10, checksum(header))
    return bytes(header) + payload


def udp_packet(source: str, destination: str, port: int, payload: bytes) -> bytes:
    """An IPv4/UDP packet (UDP checksum 0: none, allowed over IPv4)."""
    body = UDP.pack(40000, port, UDP.size + len(payload), 0) + payload
    return ipv4(source, destination, PROTO_UDP, body)


def data_frame(source_id: int, destination_id: int, *packets: bytes) -> bytes:
    """A DATA frame from ``source_id`` to ``destination_id`` holding ``packets``."""
    return frame.encode_data(source_id, destination_id, [VNET_NONE + p for p in packets])


def vxlan_datagram(vni: int, mac: str, packet: bytes) -> bytes:
    """A VXLAN datagram's payload: the header with ``vni``, then an Ethernet frame to ``mac``
    (a node's VXLAN device) carrying the IPv4 ``packet``."""
    ethernet = bytes.fromhex(mac.replace(":", "")) + bytes.fromhex("020000000066") + b"\x08\x00"
    return bytes([8, 0, 0, 0]) + vni.to_bytes(3, "big") + bytes(1) + ethernet + packet


def heartbeat_ack(source_id: int, destination_id: int, sequence: int, uid: int) -> bytes:
    """A HEARTBEAT_ACK as ``source_id`` would answer heartbeat ``sequence``."""
    return frame.encode_heartbeat(frame.MessageType.HEARTBEAT_ACK, source_id, destination_id,
                                  sequence, uid)  # fmt: skip


class SleeveSender:
    """Sends frames to nodes' sleeve port from the stranger host."""

    def __init__(self, host: StrangerHost) -> None:
        self.host = host
        self.plain = host.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.raw = host.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)

    def send(self, target: str, datagram: bytes) -> None:
        """From the stranger's own address."""
        self.plain.sendto(datagram, (target, PORT))

    def send_as(self, forged_source: str, target: str, datagram: bytes, port: int = PORT) -> None:
        """With the outer source address ``forged_source`` (say, a node's), to ``port``."""
        body = UDP.pack(port, port, UDP.size + len(datagram), 0) + datagram
        self.raw.sendto(ipv4(forged_source, target, PROTO_UDP, body), (target, 0))

    def close(self) -> None:
        """Close both sockets."""
        self.plain.close()
        self.raw.close()

    def __enter__(self) -> SleeveSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _packed(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed
