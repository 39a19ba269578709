"""A bare HTTP/2 client over a socket, for what gRPC clients do not let a test do: read the
server's SETTINGS, leave its PINGs unanswered (a half-open peer), see its GOAWAY frames.

Only what the connection tests need: the preface, SETTINGS (acknowledged), HEADERS opening a gRPC
call (HPACK literals, no Huffman), and a frame reader.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
ACK = END_STREAM = 0x1
END_HEADERS = 0x4
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4


@dataclass
class Frame:
    type: int
    flags: int
    stream: int
    payload: bytes

    def settings(self) -> dict[int, int]:
        """A SETTINGS frame's {identifier: value}."""
        p = self.payload
        return {
            struct.unpack(">H", p[i : i + 2])[0]: struct.unpack(">I", p[i + 2 : i + 6])[0]
            for i in range(0, len(p), 6)
        }


def _frame(type_: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([type_, flags]) + struct.pack(">I", stream) + payload


def _hpack_int(value: int, prefix_bits: int = 7) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out, value = [limit], value - limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes(out + [value])


def _literal(name: str, value: str) -> bytes:
    """A header field "literal without indexing, new name" (no Huffman coding)."""
    return b"\x00" + _hpack_int(len(name)) + name.encode() + _hpack_int(len(value)) + value.encode()


class RawH2:
    """One HTTP/2 connection to ``127.0.0.1:port`` that answers SETTINGS but never PINGs.

    Args:
        port: the server's port on 127.0.0.1.
        settings: the client's SETTINGS ({identifier: value}), e.g. a receive window of 0.
    """

    def __init__(self, port: int, timeout: float = 10.0, settings: dict[int, int] | None = None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""
        self._next_stream = 1
        self.closed = False
        payload = b"".join(struct.pack(">HI", k, v) for k, v in (settings or {}).items())
        self.sock.sendall(PREFACE + _frame(SETTINGS, 0, 0, payload))

    def open_call(self, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> int:
        """Send the HEADERS of a gRPC call to ``method`` (``/package.Service/Method``), no message."""
        stream, self._next_stream = self._next_stream, self._next_stream + 2
        fields = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *metadata,
        ]
        block = b"".join(_literal(k, v) for k, v in fields)
        self.sock.sendall(_frame(HEADERS, END_HEADERS, stream, block))
        return stream

    def send_message(self, stream: int, message: bytes, end_stream: bool = True) -> None:
        """Send one gRPC message (length-prefixed, uncompressed) on a call opened by :meth:`open_call`."""
        body = b"\x00" + struct.pack(">I", len(message)) + message
        self.sock.sendall(_frame(DATA, END_STREAM if end_stream else 0, stream, body))

    def read_frame(self, timeout: float | None = None) -> Frame | None:
        """The next frame (SETTINGS acknowledged on the way), or None once the server closed."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        while True:
            if len(self._buffer) >= 9:
                length = int.from_bytes(self._buffer[:3], "big")
                if len(self._buffer) >= 9 + length:
                    head, payload = self._buffer[:9], self._buffer[9 : 9 + length]
                    self._buffer = self._buffer[9 + length :]
                    frame = Frame(head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload)
                    if frame.type == SETTINGS and not frame.flags & ACK:
                        self.sock.sendall(_frame(SETTINGS, ACK, 0))
                    return frame
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = True
                return None
            self._buffer += chunk

    def frames_until_closed(self, timeout: float) -> list[Frame]:
        """Every frame until the server closes the connection; raises TimeoutError after ``timeout``."""
        end = time.monotonic() + timeout
        frames = []
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the server kept the connection open for {timeout} s: {frames}")
            try:
                frame = self.read_frame(timeout=left)
            except TimeoutError:
                raise TimeoutError(f"the server kept the connection open for {timeout} s: {frames}") from None
            if frame is None:
                return frames
            frames.append(frame)

    def server_settings(self, timeout: float = 10.0) -> dict[int, int]:
        """The server's first SETTINGS frame."""
        while True:
            frame = self.read_frame(timeout=timeout)
            assert frame is not None, "the server closed the connection before its SETTINGS"
            if frame.type == SETTINGS and not frame.flags & ACK:
                return frame.settings()

    def close(self) -> None:
        self.sock.close()
