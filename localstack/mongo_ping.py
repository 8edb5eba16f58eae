"""Send a MongoDB `ping` over the wire protocol (OP_MSG) and check for ok: 1.

Standard library only (any python3), so readiness is a real round trip through the server's
command layer, not just an open port:  python3 mongo_ping.py [HOST] [PORT]
Exit 0 when the server answered {ok: 1}.
"""

from __future__ import annotations

import socket
import struct
import sys

OP_MSG = 2013


def _cstring(s: str) -> bytes:
    return s.encode() + b"\x00"


def _bson(doc: dict) -> bytes:
    """Encode a flat document of int32 and str values (enough for a ping)."""
    body = b""
    for key, value in doc.items():
        if isinstance(value, int):
            body += b"\x10" + _cstring(key) + struct.pack("<i", value)
        else:
            raw = value.encode() + b"\x00"
            body += b"\x02" + _cstring(key) + struct.pack("<i", len(raw)) + raw
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def _ok_field(doc: bytes) -> float | None:
    """Find the top-level `ok` field of a BSON document (double, int32 or int64)."""
    pos, end = 4, struct.unpack_from("<i", doc)[0] - 1
    sizes = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16}
    while pos < end:
        kind = doc[pos]
        name_end = doc.index(b"\x00", pos + 1)
        name = doc[pos + 1 : name_end].decode()
        pos = name_end + 1
        if name == "ok":
            if kind == 0x01:
                return struct.unpack_from("<d", doc, pos)[0]
            if kind == 0x10:
                return float(struct.unpack_from("<i", doc, pos)[0])
            if kind == 0x12:
                return float(struct.unpack_from("<q", doc, pos)[0])
            return None
        if kind in sizes:
            pos += sizes[kind]
        elif kind in (0x02, 0x0D, 0x0E):  # string, js code, symbol
            pos += 4 + struct.unpack_from("<i", doc, pos)[0]
        elif kind in (0x03, 0x04):  # document, array
            pos += struct.unpack_from("<i", doc, pos)[0]
        elif kind == 0x05:  # binary
            pos += 5 + struct.unpack_from("<i", doc, pos)[0]
        else:
            return None
    return None


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def ping(host: str, port: int, timeout: float = 3.0) -> bool:
    doc = _bson({"ping": 1, "$db": "admin"})
    payload = struct.pack("<I", 0) + b"\x00" + doc  # flagBits, section kind 0
    header = struct.pack("<iiii", 16 + len(payload), 1, 0, OP_MSG)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(header + payload)
        length, _req, _resp_to, opcode = struct.unpack("<iiii", _recv_exact(sock, 16))
        body = _recv_exact(sock, length - 16)
    if opcode != OP_MSG or body[4] != 0:
        return False
    return _ok_field(body[5:]) == 1.0


def main() -> int:
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 27017
    try:
        ok = ping(host, port)
    except (OSError, ValueError, struct.error) as exc:
        print(f"ping {host}:{port}: {exc}", file=sys.stderr)
        return 1
    if not ok:
        print(f"ping {host}:{port}: no ok:1 in the reply", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
