"""The library against a real server: inputs and outputs, errors, models, health, async."""

from __future__ import annotations

import asyncio
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from clients_helpers import free_port, make_image, png, start_server

import pixforge.client as public
from pixforge.client import (
    AsyncClient,
    Client,
    ClientConfigError,
    ClientError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    UnauthenticatedError,
    UnavailableError,
)
from pixforge.codec import decode_image, encode_image


@pytest.fixture(scope="module")
def client(real_server):
    with Client(real_server.address, timeout=20) as c:
        yield c


def test_pixforge_client_is_the_one_public_path_and_the_package_names_are_deprecated():
    from pixforge import clients

    assert {"Client", "AsyncClient", "ClientError", "NotFoundError", "RetryPolicy"} <= set(public.__all__)
    for name in public.__all__:
        with pytest.warns(DeprecationWarning, match=rf"clients\.{name} is deprecated.*pixforge\.client"):
            assert getattr(clients, name) is getattr(public, name)
    assert not hasattr(clients, "no_such_name")
    from pixforge.clients import convert  # the submodules import as before

    assert callable(convert.run)


def test_translate_accepts_bytes_paths_and_arrays(client, tmp_path):
    image = make_image(1)
    path = tmp_path / "in.png"
    path.write_bytes(encode_image(image))
    expected = 255 - image
    assert (decode_image(client.translate(path.read_bytes(), "invert")).pixels == expected).all()
    assert (decode_image(client.translate(path, "invert")).pixels == expected).all()
    assert (decode_image(client.translate(str(path), "invert")).pixels == expected).all()
    assert (client.translate(image, "invert", as_array=True) == expected).all()


def test_array_layouts_round_trip(client):
    gray = make_image(2, channels=1)[:, :, 0]
    out = client.translate(gray, "invert", as_array=True)  # the server adapts 1 -> 3 channels
    assert out.shape == (24, 32, 3) and (out[:, :, 0] == 255 - gray).all()
    rgba = np.dstack([make_image(3), np.full((24, 32), 200, np.uint8)])
    out = client.translate(rgba, "invert", as_array=True)  # alpha is kept aside and re-attached
    assert out.shape == (24, 32, 4)
    assert (out[:, :, :3] == 255 - rgba[:, :, :3]).all() and (out[:, :, 3] == 200).all()


@pytest.mark.parametrize(
    "fmt, magic", [("jpeg", b"\xff\xd8\xff"), ("jpg", b"\xff\xd8\xff"), ("webp", b"RIFF")]
)
def test_output_formats(client, fmt, magic):
    assert client.translate(png(4), "invert", fmt, quality=80).startswith(magic)


def test_errors_are_typed_and_carry_the_servers_reason(client):
    with pytest.raises(InvalidArgumentError) as info:
        client.translate(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10, "invert")
    assert "PNG" in info.value.message and info.value.code_name == "INVALID_ARGUMENT"
    with pytest.raises(NotFoundError, match="nope"):
        client.translate(png(5), "nope")
    with pytest.raises(InvalidArgumentError, match="cannot read image file"):
        client.translate("/no/such/file.png", "invert")
    with pytest.raises(DeadlineExceededError):
        client.translate(make_image(6, 256, 256), "invert", timeout=1e-4)


def test_list_and_get_models(client):
    (info,) = [m for m in client.list_models() if m.name == "invert"]
    assert info.ready and info.version == 1 and info.task == "style_translation"
    assert info.scale == 1 and info.input_channels == 3 and info.tile_size == 256
    assert info.metadata["pixforge.contract"] == "1" and info.description == "test model: 255 - x"
    assert client.get_model("invert") == info
    with pytest.raises(NotFoundError):
        client.get_model("nope")


def test_health(client):
    assert client.health() == "SERVING"
    assert client.health("invert") == "SERVING"
    # Before: NOT_FOUND with an empty message (the standard health servicer sends no details).
    with pytest.raises(NotFoundError, match="no health status for 'nope'"):
        client.health("nope")


def test_translate_many_equals_unary_and_is_independent_of_concurrency(client):
    images = [make_image(i, 16 + 8 * (i % 3), 40) for i in range(24)] + [b"junk"]
    singles = [client.translate(im, "invert") for im in images[:-1]]
    one = list(client.translate_many(images, "invert", concurrency=1))
    many = list(client.translate_many(images, "invert", concurrency=8, ordered=False))
    many.sort(key=lambda r: r.index)
    assert [r.image for r in one[:-1]] == singles
    assert [r.image for r in many[:-1]] == singles
    assert not one[-1].ok and one[-1].error.code_name == "INVALID_ARGUMENT"
    assert one[0].version == 1 and one[0].timing_ms["total"] > 0


def test_async_client_against_the_real_server(real_server):
    image = make_image(7)

    async def main():
        async with AsyncClient(real_server.address, timeout=20) as client:
            out = await client.translate(image, "invert", as_array=True)
            models = await client.list_models()
            info = await client.get_model("invert")
            status = await client.health()
            results = [r async for r in client.translate_many([image] * 6 + [b"x"], "invert", concurrency=3)]
            with pytest.raises(NotFoundError):
                await client.get_model("nope")
            return out, models, info, status, results

    out, models, info, status, results = asyncio.run(main())
    assert (out == 255 - image).all()
    assert [m.name for m in models] == ["invert"] and info.name == "invert" and status == "SERVING"
    assert [r.ok for r in results] == [True] * 6 + [False]
    assert len({r.image for r in results[:6]}) == 1


def test_async_client_made_outside_the_loop_opens_its_channel_in_it(real_server):
    # Before: the channel was bound at construction, and its first call in asyncio.run failed
    # with a raw RuntimeError ("attached to a different loop").
    client = AsyncClient(real_server.address, timeout=20)

    async def main():
        await client.wait_ready()
        return await client.health()

    assert asyncio.run(main()) == "SERVING"

    async def other_loop():
        with pytest.raises(RuntimeError, match="one client per event loop"):
            await client.health()

    asyncio.run(other_loop())


def test_async_wait_ready_times_out_with_unavailable():
    async def main():
        async with AsyncClient(f"127.0.0.1:{free_port()}") as client:
            with pytest.raises(UnavailableError, match="reachable"):
                await client.wait_ready(0.2)

    asyncio.run(main())


def test_the_deprecated_import_path_warns_once():
    # Before: `from pixforge.clients import X` warned twice (the import system's hasattr check,
    # then the import itself).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec("from pixforge.clients import Client as _", {})
    assert [str(w.message) for w in caught] == [
        "pixforge.clients.Client is deprecated: import it from pixforge.client"
    ]


def test_translate_is_typed_by_as_array(tmp_path):
    """mypy sees np.ndarray with as_array=True and bytes without it (overloads on translate)."""
    api = pytest.importorskip("mypy.api")
    root = Path(__file__).resolve().parents[2]
    view = tmp_path / "pixforge"  # the installed layout, as tools/typecheck.py builds it
    view.mkdir()
    for entry in (root / "pixforge").iterdir():
        if entry.name != "__pycache__":
            (view / entry.name).symlink_to(entry)
    (view / "service").symlink_to(root / "service", target_is_directory=True)
    (view / "clients").symlink_to(root / "clients", target_is_directory=True)
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        "from typing import assert_type\n"
        "import numpy as np\n"
        "from pixforge.client import AsyncClient, Client, TranslateParams\n"
        "def f(c: Client, flag: bool) -> None:\n"
        "    assert_type(c.translate(b'', 'm'), bytes)\n"
        "    assert_type(c.translate(b'', 'm', quality=90), bytes)\n"
        "    assert_type(c.translate(b'', 'm', as_array=True), np.ndarray)\n"
        "    assert_type(c.translate(b'', 'm', as_array=flag), bytes | np.ndarray)\n"
        "    assert_type(c.translate(b'', params=TranslateParams('m')), bytes | np.ndarray)\n"
        "async def g(c: AsyncClient) -> None:\n"
        "    assert_type(await c.translate(b'', 'm'), bytes)\n"
        "    assert_type(await c.translate(b'', 'm', as_array=True), np.ndarray)\n"
    )
    config = str(root / "pyproject.toml")
    cache = str(tmp_path / ".mypy_cache")
    args = ["--config-file", config, "--cache-dir", cache, "--no-incremental", str(snippet)]
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the view's pixforge/ comes first on mypy's search path
    try:
        out, err, status = api.run(args)
    finally:
        os.chdir(cwd)
    assert status == 0, out + err


def test_token_is_sent_and_required(token_server):
    with Client(token_server.address, timeout=10) as anonymous, pytest.raises(UnauthenticatedError):
        anonymous.translate(png(1), "invert")
    with Client(token_server.address, token="s3cret", timeout=10) as client:
        assert client.translate(png(1), "invert")
        assert all(r.ok for r in client.translate_many([png(2)] * 3, "invert"))


def test_bad_settings_fail_at_construction(tmp_path):
    with pytest.raises(ClientConfigError, match="HOST:PORT"):
        Client("localhost")
    with pytest.raises(ClientConfigError, match="timeout"):
        Client("localhost:1", timeout=0)
    with pytest.raises(ClientConfigError, match="certificate"):
        Client("localhost:1", tls=str(tmp_path / "missing.pem"))
    with pytest.raises(ClientConfigError, match="unexpected keyword"):
        Client("localhost:1", colour="blue")


def test_tls_with_a_private_root_certificate(model_repo, tmp_path):
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = start_server(model_repo, tls__cert_file=str(cert), tls__key_file=str(key))
    try:
        with Client(server.address, tls=str(cert), timeout=10) as client:
            assert client.health() == "SERVING"
            assert client.translate(png(1), "invert").startswith(b"\x89PNG")
        with Client(server.address, timeout=5) as plaintext, pytest.raises(ClientError):
            plaintext.health()
    finally:
        server.stop(0)
