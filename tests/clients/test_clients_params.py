"""TranslateParams: one validated settings object, passed as `params=` or built from keywords."""

from __future__ import annotations

import asyncio

import pytest
from clients_helpers import make_image, png

from pixforge.client import AsyncClient, Client, InvalidArgumentError
from pixforge.clients.types import TranslateParams


def test_params_are_validated_and_normalised_on_construction():
    assert TranslateParams("m", "jpg").output_format == "jpeg"
    with pytest.raises(InvalidArgumentError, match="model name"):
        TranslateParams("")
    with pytest.raises(InvalidArgumentError, match="unknown output format"):
        TranslateParams("m", "gif")
    with pytest.raises(InvalidArgumentError, match="quality"):
        TranslateParams("m", quality=101)
    with pytest.raises(InvalidArgumentError, match="tile_overlap"):
        TranslateParams("m", tile_overlap=-1)


def test_resolve_builds_from_keywords_or_lays_them_over_params():
    built = TranslateParams.resolve(None, "m", None, {"quality": 80, "timeout": 3.0})
    assert built == TranslateParams("m", "png", quality=80, timeout=3.0)
    base = TranslateParams("m", "webp", version=2)
    assert TranslateParams.resolve(base, None, None, {}) is base
    assert TranslateParams.resolve(base, "n", "jpg", {"as_array": True}) == TranslateParams(
        "n", "jpeg", version=2, as_array=True
    )
    with pytest.raises(InvalidArgumentError, match="model name is required"):
        TranslateParams.resolve(None, None, "png", {})
    with pytest.raises(TypeError, match="'colour'"):
        TranslateParams.resolve(base, None, None, {"colour": "blue"})  # type: ignore[typeddict-unknown-key]


def test_clients_accept_params_and_keywords_alike(fake_server):
    image = make_image(3)
    params = TranslateParams("invert", "png", as_array=True, timeout=10.0)
    with Client(fake_server.address, timeout=10) as client:
        assert (client.translate(image, params=params) == 255 - image).all()
        assert client.translate(image, params=params, as_array=False).startswith(b"\x89PNG")  # override
        with pytest.raises(TypeError, match="concurrency"):
            client.translate(image, params=params, concurrency=2)  # type: ignore[call-arg]
        results = list(client.translate_many([image, image], params=params, concurrency=2))
    assert [r.index for r in results] == [0, 1] and all((r.image == 255 - image).all() for r in results)

    async def main():
        async with AsyncClient(fake_server.address, timeout=10) as client:
            one = await client.translate(png(1), params=params)
            many = [r async for r in client.translate_many([png(1)], params=params, ordered=False)]
            return one, many

    one, many = asyncio.run(main())
    assert one.shape == (24, 32, 3) and many[0].ok and many[0].image.shape == (24, 32, 3)
