"""Typed errors shared by the codec, the model contract, the settings, the server and the clients.

Each carries a human message; the server maps them to gRPC status codes in one place.

Every exception pixforge raises on purpose derives from :class:`PixforgeError` (the serving core's
from ``pixforge.service.errors.ServiceError``, the clients' from ``pixforge.clients.ClientError``,
training's and the benchmarks' directly), so ``except PixforgeError`` catches exactly the failures
pixforge describes itself; a class that also means "bad value" or "failed operation" additionally
derives from ValueError or RuntimeError. tests/shared/test_shared_errors.py checks every module.
"""


def one_line(message: str) -> str:
    """``message`` on one line, for a command's one-line ``error:`` output: a library's message (a
    YAML parser's, onnx.checker's, torch's) or a value holding a line break would otherwise spread
    the error over several terminal lines."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


class PixforgeError(Exception):
    """Base class for every error pixforge raises on purpose."""


class ImageDecodeError(PixforgeError):
    """The bytes are not a decodable image (empty, truncated, random, unsupported format)."""


class ImageTooLargeError(PixforgeError):
    """The image's header declares more pixels than the configured limit (decompression bomb)."""


class ImageEncodeError(PixforgeError):
    """An image could not be encoded in the requested format."""


class ContractError(PixforgeError):
    """An ONNX model breaks docs/model-contract.md."""


class SettingsError(PixforgeError, ValueError):
    """A setting is unknown, has the wrong type or an invalid value (raised by pixforge.settings).

    Also a ValueError, so code that validates plain data with ``except ValueError`` still sees it.

    Attributes:
        key: the dotted setting at fault (``train.lr_g``, ``batching.max_batch_size``); the message
            starts with it.
        reason: the message without the key.
    """

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key = key
        self.reason = reason


class UsageError(PixforgeError):
    """A command was called wrongly (a bad flag value, a missing input); the CLI prints it and exits 2."""
