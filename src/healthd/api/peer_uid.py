"""Which local user is at the other end of a loopback TCP connection: the kernel says.

Every local user may connect from 127.0.0.1 (or bind any of 127.0.0.0/8), so on TCP the
address tells local users nothing. The kernel knows who owns the client's socket: this asks
it the way ``ss -tnpe`` does, with one sock_diag request (NETLINK_SOCK_DIAG,
SOCK_DIAG_BY_FAMILY) for exactly the client's socket, and reads ``idiag_uid`` from the
answer. No privilege is needed, and the answer cannot be forged by the client: it is the uid
the socket was created with.

Why struct packing and not pyroute2: its diag module dumps every socket of a family (no
exact lookup), and importing it costs ~100 ms and ~20 MB of resident memory, 278 modules;
an exact request built with it costs ~150-600 µs. This is one fixed request and one fixed
answer, ~10 µs, done once per accepted loopback connection.

The layouts are the kernel's (include/uapi/linux/inet_diag.h, sock_diag.h, netlink.h):

    struct nlmsghdr          { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }
    struct inet_diag_req_v2  { u8 family, protocol, ext, pad; u32 states; sockid id; }
    struct inet_diag_sockid  { be16 sport, dport; be32 src[4], dst[4]; u32 if; u32 cookie[2]; }
    struct inet_diag_msg     { u8 family, state, timer, retrans; sockid id;
                               u32 expires, rqueue, wqueue, uid, inode; }
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
ALL_STATES = 0xFFFFFFFF

_HEADER = struct.Struct("=IHHII")  # nlmsghdr, host order
_REQUEST = struct.Struct("=BBBBI")  # inet_diag_req_v2 up to its sockid
_SOCKID = struct.Struct(">HH16s16s")  # ports and addresses, network order
_SOCKID_TAIL = struct.Struct("=III")  # interface, cookie (host order)
# inet_diag_msg, 72 bytes: what is read of it
_MESSAGE_SIZE = 72
_MESSAGE_FAMILY = struct.Struct("=B")  # at 0
_MESSAGE_PORTS = struct.Struct(">HH")  # at 4: the sockid's sport, dport
_MESSAGE_OWNER = struct.Struct("=II")  # at 64: uid, inode

# The kernel answers within the send; the timeout only bounds a kernel that does not.
TIMEOUT = 0.1

_sequence = itertools.count(1)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def loopback_peer_uid(local: tuple[str, int], peer: tuple[str, int]) -> int | None:
    """The uid owning the client's end of a loopback TCP connection that ``local`` (our
    accepted socket's address) has with ``peer``; None for a peer that is not on loopback, or
    when the kernel cannot say (the client's socket is already closed, say)."""
    try:
        ours, theirs = _address(local[0]), _address(peer[0])
    except ValueError:
        return None
    if not theirs.is_loopback or ours.version != theirs.version:
        return None
    family = socket.AF_INET if theirs.version == 4 else socket.AF_INET6
    # The client's socket: its source is the peer, its destination is us.
    request = _request(family, theirs, peer[1], ours, local[1])
    try:
        answer = _asker.ask(request)
    except OSError:
        return None
    return _uid(answer, family, peer[1], local[1])


def _address(host: str) -> IpAddress:
    address = ipaddress.ip_address(host.partition("%")[0])  # no zone on loopback
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack listener's view of an IPv4 client
    return address


def _request(family: int, src: IpAddress, sport: int, dst: IpAddress, dport: int) -> bytes:
    body = (
        _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, ALL_STATES)
        + _SOCKID.pack(sport, dport, src.packed, dst.packed)  # 16s pads IPv4 with zeros
        + _SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    )
    # No NLM_F_DUMP: one socket, looked up by its addresses and ports.
    seq = next(_sequence) & 0xFFFFFFFF
    return _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + body


class _Asker:
    """One netlink socket, kept: opening one per lookup costs as much again (~20 µs an
    accept). Used from the event loop's thread only, one request at a time."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None

    def ask(self, request: bytes) -> bytes:
        seq = _HEADER.unpack_from(request)[3]
        if self.sock is None:
            kind = socket.SOCK_RAW | socket.SOCK_CLOEXEC
            self.sock = socket.socket(socket.AF_NETLINK, kind, NETLINK_SOCK_DIAG)
            self.sock.settimeout(TIMEOUT)
        try:
            self.sock.sendto(request, (0, 0))  # to the kernel
            # An answer to an earlier request that timed out may come first: skip it.
            for _ in range(8):
                answer = self.sock.recv(4096)
                if len(answer) >= _HEADER.size and _HEADER.unpack_from(answer)[3] == seq:
                    return answer
        except OSError:
            self.sock.close()
            self.sock = None
            raise
        return b""


_asker = _Asker()


def _uid(answer: bytes, family: int, sport: int, dport: int) -> int | None:
    if len(answer) < _HEADER.size + _MESSAGE_SIZE:
        return None  # an error (ENOENT: no such socket) or a short answer
    length, kind, _, _, _ = _HEADER.unpack_from(answer)
    if kind != SOCK_DIAG_BY_FAMILY or length < _HEADER.size + _MESSAGE_SIZE:
        return None
    at = _HEADER.size
    (got_family,) = _MESSAGE_FAMILY.unpack_from(answer, at)
    if (got_family, *_MESSAGE_PORTS.unpack_from(answer, at + 4)) != (family, sport, dport):
        return None  # not the socket asked about
    uid, inode = _MESSAGE_OWNER.unpack_from(answer, at + 64)
    # A socket no process holds any more (closed, lingering in FIN-WAIT or TIME-WAIT) is
    # answered with uid 0 and inode 0: that 0 is a placeholder, not root.
    if inode == 0:
        return None
    return int(uid)
