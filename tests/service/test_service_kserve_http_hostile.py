"""The KServe v2 HTTP front against hostile or broken clients, byte by byte on raw sockets where an
HTTP library would not send it: stalled and oversized bodies (408 and 413 before the body, no call
slot held meanwhile), ``Expect: 100-continue``, ``Inference-Header-Content-Length`` that is not an
ASCII number or comes twice, corrupt and unknown Content-Encodings, ``Accept-Encoding`` weights,
an unknown model with a large body, request ids that no header can carry, and the JSON 404.

The server's body timeout is :data:`BODY_TIMEOUT_S` here (patched while it starts), so a stalled
body is answered in well under a second.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import time
import zlib

import numpy as np
import pytest
from service_helpers import SMALL_LIMITS, kserve_json_request, rgb_image, test_config

from pixforge.service import kserve_http
from pixforge.service.errors import InvalidRequestError
from pixforge.service.kserve_http import header_value, json_header_length, response_coding

BODY_TIMEOUT_S = 0.5
MAX_CALLS = 2  # max_concurrent_rpcs: three stalled bodies would have starved the server
LIMIT = SMALL_LIMITS["limits.max_message_bytes"]  # 1 MiB
INFER = "/v2/models/invert/infer"


@pytest.fixture(scope="module")
def server(start_kserve, model_repo):
    config = test_config(
        model_repo,
        http_port=-1,
        strict_readiness=False,  # the standard repository holds broken models on purpose
        max_concurrent_rpcs=MAX_CALLS,
        **SMALL_LIMITS,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kserve_http, "BODY_TIMEOUT_S", BODY_TIMEOUT_S)  # read when the app is built
        return start_kserve(config)


@pytest.fixture(scope="module")
def port(server) -> int:
    return server[0].http_port


def infer_body(image: np.ndarray, **extra) -> bytes:
    return json.dumps(kserve_json_request(image, **extra)).encode()


def request(port: int, path: str, body: bytes | None = None, headers=(), method: str = "POST"):
    """(status, headers, body) over http.client: headers as (name, value) pairs, repeats allowed,
    values as str or raw bytes; the body is sent as is (no Content-Encoding applied)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def error_of(raw: bytes) -> str:
    answer = json.loads(raw)
    assert list(answer) == ["error"], answer
    return answer["error"]


class Raw:
    """One TCP connection to the server: bytes out, HTTP responses parsed back."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        self.buffer += chunk
        return bool(chunk)

    def response(self, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        """The next response (an interim 100 too); fails if none arrives within ``timeout``."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(deadline), f"no response within {timeout} s: {self.buffer!r}"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(self.buffer) < length:
            assert self._fill(deadline), "response body cut short"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def closed(self, timeout: float = 2.0) -> bool:
        """Whether the server closes the connection within ``timeout`` (anything it sends is kept)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


def head(path: str, *lines: str) -> bytes:
    return ("\r\n".join([f"POST {path} HTTP/1.1", "Host: test", *lines]) + "\r\n\r\n").encode()


# --------------------------------------------------------------------------- stalled and large bodies


def test_stalled_bodies_get_408_and_hold_no_call_slot(port):
    stalled = [Raw(port) for _ in range(MAX_CALLS + 1)]
    try:
        start = time.monotonic()
        for conn in stalled:
            conn.send(head(INFER, "Content-Length: 1000", "Content-Type: application/json") + b'{"inp')
        # More stalled bodies than max_concurrent_rpcs: a complete request is still served.
        image = rgb_image(4, 4, seed=3)
        status, _, raw = request(port, INFER, infer_body(image))
        assert status == 200, raw
        for conn in stalled:
            status, headers, raw = conn.response(timeout=BODY_TIMEOUT_S + 3)
            assert status == 408 and "stalled" in error_of(raw), raw
            assert "5 of 1000 bytes" in error_of(raw)
            assert headers.get("connection", "").lower() == "close"
            assert conn.closed()
        assert time.monotonic() - start >= BODY_TIMEOUT_S * 0.9
    finally:
        for conn in stalled:
            conn.close()


def test_stalled_control_request_bodies_get_408(port):
    conn = Raw(port)
    try:
        conn.send(head("/v2/repository/index", "Content-Length: 100") + b"{")
        status, _, raw = conn.response(timeout=BODY_TIMEOUT_S + 3)
        assert status == 408 and "stalled" in error_of(raw)
    finally:
        conn.close()


def test_a_slow_body_that_keeps_moving_is_read(port):
    body = infer_body(rgb_image(4, 4, seed=4))
    conn = Raw(port)
    try:
        conn.send(head(INFER, f"Content-Length: {len(body)}"))
        step = len(body) // 5 + 1
        for start in range(0, len(body), step):  # about 1 s in all, twice the timeout; no pause is
            time.sleep(BODY_TIMEOUT_S * 0.4)
            conn.send(body[start : start + step])
        status, _, raw = conn.response()
        assert status == 200, raw
    finally:
        conn.close()


def test_content_length_over_the_limit_is_413_before_the_body(port):
    conn = Raw(port)
    try:
        conn.send(head(INFER, f"Content-Length: {LIMIT + 1}"))  # and no body at all
        status, _, raw = conn.response(timeout=BODY_TIMEOUT_S * 0.8)  # not a 408 after the timeout
        assert status == 413 and "limits.max_message_bytes" in error_of(raw)
        assert f"{LIMIT + 1} bytes (Content-Length)" in error_of(raw)
    finally:
        conn.close()


def test_chunked_body_over_the_limit_is_413(port):
    conn = Raw(port)
    try:
        conn.send(head(INFER, "Transfer-Encoding: chunked"))
        chunk = b"x" * 65536
        for _ in range(LIMIT // len(chunk) + 2):
            try:
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
        status, _, raw = conn.response()
        assert status == 413 and "limits.max_message_bytes" in error_of(raw)
    finally:
        conn.close()


def test_expect_100_continue(port):
    # Over the limit: 413 instead of 100 Continue, so the client never sends the body.
    conn = Raw(port)
    try:
        conn.send(head(INFER, f"Content-Length: {LIMIT + 1}", "Expect: 100-continue"))
        status, _, raw = conn.response(timeout=BODY_TIMEOUT_S * 0.8)
        assert status == 413 and "limits.max_message_bytes" in error_of(raw)
    finally:
        conn.close()
    # An encoding the server cannot decode: 415, before the body too.
    conn = Raw(port)
    try:
        conn.send(head(INFER, "Content-Length: 10", "Content-Encoding: zstd-bogus", "Expect: 100-continue"))
        status, _, raw = conn.response(timeout=BODY_TIMEOUT_S * 0.8)
        assert status == 415 and "zstd-bogus" in error_of(raw)
    finally:
        conn.close()
    # Within the limit: 100 Continue, then the body, then the answer.
    body = infer_body(rgb_image(4, 4, seed=5))
    conn = Raw(port)
    try:
        conn.send(head(INFER, f"Content-Length: {len(body)}", "Expect: 100-continue"))
        assert conn.response()[0] == 100
        conn.send(body)
        status, _, raw = conn.response()
        assert status == 200, raw
    finally:
        conn.close()
    # Any other expectation: 417, as JSON like every /v2 error.
    conn = Raw(port)
    try:
        conn.send(head(INFER, "Content-Length: 2", "Expect: something-else") + b"{}")
        status, _, raw = conn.response()
        assert status == 417 and "something-else" in error_of(raw)
    finally:
        conn.close()


# --------------------------------------------------------------------------- Inference-Header-Content-Length


def test_json_header_length_takes_ascii_digits_only():
    assert json_header_length("12", 20) == 12 and json_header_length("0", 0) == 0
    assert json_header_length("007", 7) == 7
    for value in ("\u00b9", "\uff11\uff12", "\u0663", "-1", "+1", "1e1", "1.0", "", " ", "9" * 5000, "21"):
        with pytest.raises(InvalidRequestError, match="Inference-Header-Content-Length"):
            json_header_length(value, 20)


@pytest.mark.parametrize(
    "value",
    ["\u00b9".encode(), "\uff11\uff12".encode(), b"-5", b"0x10", b"9" * 5000, b"99999"],
    ids=["superscript", "fullwidth", "negative", "hex", "huge", "over-body"],
)
def test_bad_inference_header_lengths_are_400(port, value):
    head_json = b'{"inputs": []}'
    status, _, raw = request(port, INFER, head_json, [("Inference-Header-Content-Length", value)])
    assert status == 400 and "Inference-Header-Content-Length" in error_of(raw), raw


def test_duplicate_inference_header_length_is_400(port):
    image = rgb_image(4, 4, seed=6)
    text = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [4, 4, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": image.size},
                }
            ]
        }
    ).encode()
    length = ("Inference-Header-Content-Length", str(len(text)))
    status, _, raw = request(port, INFER, text + image.tobytes(), [length])
    assert status == 200, raw
    status, _, raw = request(
        port, INFER, text + image.tobytes(), [length, ("Inference-Header-Content-Length", "3")]
    )
    assert status == 400 and "sent 2 times" in error_of(raw)


# --------------------------------------------------------------------------- content codings


def test_corrupt_compressed_bodies_are_400(port, caplog):
    for encoding in ("gzip", "br", "deflate"):
        garbage = b"\x1f\x8b\x08\x00" + b"\xff" * 40 if encoding == "gzip" else b"\xff" * 40
        status, _, raw = request(port, INFER, garbage, [("Content-Encoding", encoding)])
        assert status == 400 and "cannot be read" in error_of(raw), (encoding, raw)
    # The connection closes after the answer: aiohttp does not read on and log the error again.
    time.sleep(0.1)
    assert not [r for r in caplog.records if r.name.startswith("aiohttp")], caplog.text


def test_unknown_content_encodings_are_415_and_known_ones_decode(port):
    body = infer_body(rgb_image(4, 4, seed=7))
    for encoding in ("zstd-bogus", "gzip, gzip", "x-gzip", "compress"):
        status, _, raw = request(port, INFER, body, [("Content-Encoding", encoding)])
        assert status == 415 and "Content-Encoding" in error_of(raw), (encoding, raw)
    for encoding, data in (
        ("identity", body),
        ("GZIP", gzip.compress(body)),
        ("deflate", zlib.compress(body)),
    ):
        status, _, raw = request(port, INFER, data, [("Content-Encoding", encoding)])
        assert status == 200, (encoding, raw)


def test_accept_encoding_weights():
    gz, deflate = kserve_http.web.ContentCoding.gzip, kserve_http.web.ContentCoding.deflate
    cases = {
        "": None,
        "gzip": gz,
        "GZip": gz,
        "deflate": deflate,
        "gzip;q=0": None,
        "gzip; q=0.000": None,
        "gzip;q=0, deflate": deflate,
        "deflate;q=0.5, gzip;q=0.4": deflate,
        "gzip, deflate": gz,
        "*": gz,
        "*;q=0": None,
        "*, gzip;q=0": deflate,
        "*;q=0, identity": None,
        "identity": None,
        "identity;q=0": None,
        "gzip;q=0.5, identity": None,
        "gzip, identity;q=0.5": gz,
        "gzip;q=0.5": gz,
        "gzip;q=1.5": None,  # a malformed weight: the entry is ignored
        "gzip;q=abc, deflate": deflate,
        "br, zstd": None,
        "gzip;q=0, gzip": None,  # a repeated coding: its first entry counts
    }
    for header, coding in cases.items():
        assert response_coding(header) == coding, header


def test_responses_follow_accept_encoding(port):
    image = rgb_image(6, 6, seed=8)
    body = infer_body(image)
    for accept, coding in (("gzip;q=0", None), ("gzip;q=0, deflate", "deflate"), ("*", "gzip"), (None, None)):
        headers = [("Accept-Encoding", accept)] if accept is not None else []
        status, response_headers, raw = request(port, INFER, body, headers)
        assert status == 200 and response_headers.get("Content-Encoding") == coding, accept
        if coding == "gzip":
            raw = gzip.decompress(raw)
        elif coding == "deflate":
            raw = zlib.decompress(raw)
        data = json.loads(raw)["outputs"][0]["data"]
        assert np.array_equal(np.array(data, np.uint8).reshape(image.shape), 255 - image)


# --------------------------------------------------------------------------- models, paths, ids


def test_unknown_model_is_404_before_its_body_is_read(port):
    conn = Raw(port)
    try:
        conn.send(head("/v2/models/no-such-model/infer", f"Content-Length: {LIMIT - 1}") + b"{")
        status, _, raw = conn.response(timeout=BODY_TIMEOUT_S * 0.8)  # no body read, no 408
        assert status == 404 and "no-such-model" in error_of(raw)
    finally:
        conn.close()
    status, _, raw = request(port, "/v2/models/invert/versions/x/infer", b"{}")
    assert status == 400 and error_of(raw)


def test_trailing_slashes_are_json_404_naming_the_path(port):
    for path in ("/v2/models/invert/ready/", "/v2/health/live/", "/v2/models/invert/infer/"):
        method = "POST" if path.endswith("infer/") else "GET"
        status, headers, raw = request(port, path, b"{}" if method == "POST" else None, method=method)
        assert status == 404 and headers["Content-Type"].startswith("application/json")
        assert path in error_of(raw)


def test_header_values_from_client_text_are_printable_ascii():
    assert header_value("req-7 ~!%") == "req-7 ~!%"
    assert header_value("caf\u00e9") == "caf%C3%A9"
    assert header_value("a\r\nx-evil: 1") == "a%0D%0Ax-evil%3A%201"
    assert header_value("\x00\t\x7f\x85").isascii()
    assert header_value("\ud800").isascii()  # a lone surrogate (valid in JSON text)


@pytest.mark.parametrize("request_id", ["a\x01b", "a\r\nx-evil: 1", "tab\there", "\x85", "\ud800"])
def test_request_ids_with_control_characters_are_400(port, request_id):
    body = infer_body(rgb_image(4, 4, seed=9), id=request_id)
    status, headers, raw = request(port, INFER, body)
    assert status == 400 and error_of(raw), raw
    assert "x-evil" not in headers


def test_request_id_header_with_control_characters_is_400(port):
    # aiohttp's parser refuses most control characters in a header; a tab passes it.
    status, headers, raw = request(port, INFER, infer_body(rgb_image(4, 4)), [("x-request-id", "a\tb")])
    assert status == 400 and "x-request-id" in error_of(raw)
    assert "x-request-id" not in headers
