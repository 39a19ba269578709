"""How evaluation images reach a model: a local onnxruntime session, or a running pixforge server.

Both runners take and return uint8 RGB (H, W, 3) arrays and apply the model's contract the way
the server does: the input is converted to the model's channel count, reflect-padded at the
bottom/right to a multiple of ``size_multiple`` and the output cropped back to ``scale`` times
the input size. A colourisation model runs on a copy no larger than ``render_size`` whose chroma
is joined with the full-resolution luminance, as the server does (``colorization.render_size``).
Locally the whole image is one call (no tiling); through ``--server`` the server decides (it may
tile large images).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pixforge.codec import encode_image
from pixforge.codec import to_channels as codec_to_channels
from pixforge.contract import INPUT_NAME, contract_from_session
from pixforge.errors import ContractError
from pixforge.repository import default_repository, latest_versions, scan_repository
from pixforge.service.config import ColorizationConfig
from pixforge.service.pipeline import join_chroma, render_copy
from pixforge.service.tiling import pad_to, round_up

from ..data.files import file_sha256
from .errors import EvalError

# What a model's contract says about its input and output (docs/model-contract.md).
CONTRACT_FIELDS = ("task", "scale", "input_channels", "output_channels", "size_multiple")


@dataclass(frozen=True)
class EvaluatedModel:
    """The model an evaluation measured, from its contract metadata (results.json's ``model``).

    Not the client library's ``pixforge.client.ModelInfo`` (a server's answer to GetModel).

    Attributes:
        name, version: repository name and the version actually evaluated.
        task, scale, input_channels, output_channels, size_multiple: the model contract.
        metadata: every metadata_props entry.
        location: the model file (local) or "server HOST:PORT".
        sha256: SHA-256 of the model file (local only; None through a server).
        provider: the onnxruntime execution provider that ran it.
    """

    name: str
    version: int
    task: str
    scale: int
    input_channels: int
    output_channels: int
    size_multiple: int
    location: str
    provider: str
    sha256: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls, name: str, version: int, contract, *, location: str, provider: str, sha256: str | None = None
    ) -> EvaluatedModel:
        """From anything that carries the contract fields and `metadata`: a local file's
        ModelContract, or the model description a server returns."""
        fields = {f: getattr(contract, f) for f in CONTRACT_FIELDS}
        return cls(
            name,
            version,
            **fields,
            location=location,
            provider=provider,
            sha256=sha256,
            metadata=dict(contract.metadata),
        )

    def to_dict(self) -> dict:
        """JSON-able summary (metadata reduced to the keys a reader of results.json wants)."""
        keep = (
            "description",
            "arch",
            "precision",
            "training_data",
            "source_checkpoint_sha256",
            "export_date",
            "direction",
        )
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "scale": self.scale,
            "input_channels": self.input_channels,
            "output_channels": self.output_channels,
            "size_multiple": self.size_multiple,
            "location": self.location,
            "sha256": self.sha256,
            "provider": self.provider,
            "metadata": {k: self.metadata[k] for k in keep if self.metadata.get(k)},
        }


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (H, W[, C]) -> (H, W, channels), the server's channel adaptation (BT.601 luma for 1)."""
    if image.ndim == 2:
        image = image[:, :, None]
    return codec_to_channels(np.ascontiguousarray(image[:, :, :3]), channels)


def pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pad (H, W, C) at the bottom/right to multiples of `multiple`, as the server does."""
    h, w = image.shape[:2]
    return pad_to(image, round_up(h, multiple), round_up(w, multiple))


class Runner(abc.ABC):
    """Callable: uint8 RGB (H, W, 3) -> the model's uint8 RGB output (H*scale, W*scale, 3)."""

    info: EvaluatedModel

    def __call__(self, image: np.ndarray) -> np.ndarray:
        out = self._run(to_channels(np.ascontiguousarray(image), self.info.input_channels))
        return np.ascontiguousarray(to_channels(out, 3))

    @abc.abstractmethod
    def _run(self, image: np.ndarray) -> np.ndarray:
        """One image already in the model's channel count -> its raw output."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the session or channel."""


class LocalRunner(Runner):
    """An onnxruntime session on a repository's model file (CUDA when it really works, else CPU).

    Args:
        render_size: colourisation: the longest side the model runs at (0: the server's default).
    """

    def __init__(self, name: str, version: int, path: Path, render_size: int = 0):
        import onnxruntime as ort

        # The server's probe: onnxruntime-gpu lists CUDA even where it cannot load; ask ctypes first.
        from pixforge.service.engine import probe_gpu

        providers = ["CPUExecutionProvider"]
        if probe_gpu().cuda:
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            contract = contract_from_session(self.session)
        except ContractError as exc:
            raise EvalError(f"{path} is not a valid pixforge model: {exc}") from None
        except Exception as exc:  # onnxruntime's own exception types for unreadable files
            raise EvalError(f"cannot load {path}: {str(exc).strip().splitlines()[0]}") from None
        self.info = EvaluatedModel.of(
            name,
            version,
            contract,
            location=str(path),
            provider=self.session.get_providers()[0],
            sha256=file_sha256(path),
        )
        self.render_size = render_size or ColorizationConfig().render_size

    def _run(self, image: np.ndarray) -> np.ndarray:
        small = render_copy(image, self.render_size, self.info)
        if small is not None:
            return join_chroma(image, self._whole(small))
        return self._whole(image)

    def _whole(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        padded = pad_to_multiple(image, self.info.size_multiple)
        out = self.session.run(None, {INPUT_NAME: padded[None]})[0][0]
        s = self.info.scale
        return out[: h * s, : w * s]

    def close(self) -> None:
        self.session = None  # onnxruntime frees the session (and its device memory) with the object


class ServerRunner(Runner):
    """Sends each image as PNG bytes to a pixforge server's Translate RPC (pixforge.client).

    Args:
        render_size: colourisation: sent with each request (0: the server's own setting).
    """

    def __init__(
        self, target: str, name: str, version: int | None, timeout: float = 300.0, render_size: int = 0
    ):
        from pixforge.client import Client, ClientError, NotFoundError

        self.client = Client(target, timeout=timeout)
        try:
            self.client.wait_ready(timeout=10.0)
            remote = self.client.get_model(name, version or 0, timeout=30.0)
        except NotFoundError as exc:
            self.client.close()
            raise EvalError(str(exc)) from None
        except ClientError as exc:
            self.client.close()
            raise EvalError(f"server {target} unreachable or failing: {exc}") from None
        if not remote.ready:
            self.client.close()
            raise EvalError(f"model {name!r} on {target} is {remote.state}: {remote.error or 'not ready'}")
        self.info = EvaluatedModel.of(
            name, remote.version, remote, location=f"server {target}", provider=remote.provider
        )
        self._client_error = ClientError
        self.render_size = render_size

    def _run(self, image: np.ndarray) -> np.ndarray:
        png = encode_image(image if image.shape[2] == 3 else image[:, :, 0], "png")  # lossless
        try:
            out = self.client.translate(
                png, self.info.name, as_array=True, version=self.info.version, render_size=self.render_size
            )
        except self._client_error as exc:
            raise EvalError(f"the server failed on an image: {exc}") from None
        return out

    def close(self) -> None:
        self.client.close()


def find_model(repo: Path, name: str, version: int | None) -> tuple[int, Path]:
    """(version, model file) of `name` in a repository; the highest version unless one is given."""
    try:
        entries = scan_repository(repo)
    except FileNotFoundError as exc:
        raise EvalError(str(exc)) from None
    mine = [e for e in entries if e.name == name]
    if not mine:
        names = sorted(latest_versions(entries))
        listed = ", ".join(names) if names else "none"
        raise EvalError(f"no model {name!r} in repository {repo} (models there: {listed})")
    if version is None:
        entry = latest_versions(mine)[name]
    else:
        match = [e for e in mine if e.version == version]
        if not match:
            have = ", ".join(str(e.version) for e in mine)
            raise EvalError(f"model {name!r} has no version {version} in {repo} (versions: {have})")
        entry = match[0]
    return entry.version, entry.path


def precision_file(reference: Path, precision: str) -> Path:
    """The file of a model version that holds ``precision`` (the reference or a variant).

    Raises:
        EvalError: the version has no file of that precision (the message lists the ones it has).
    """
    from pixforge.service.engine import model_files

    files = model_files(reference)
    if precision not in files:
        raise EvalError(f"{reference.parent} has no {precision} file (precisions there: {', '.join(files)})")
    return files[precision]


def open_runner(
    name: str,
    *,
    version: int | None = None,
    repo: str | Path | None = None,
    server: str | None = None,
    render_size: int = 0,
    precision: str | None = None,
) -> Runner:
    """A runner for model `name` from a repository (default: the bundled one) or a server.

    ``render_size``: colourisation, the longest side the model runs at; 0 = the server's default
    locally, the server's own ``colorization.render_size`` through ``server``.
    ``precision``: run that precision variant of the version (local only; default: its reference
    ``model.onnx``).

    Raises:
        EvalError: unknown model, version or precision, invalid model file, unreachable server.
    """
    if server:
        if precision:
            raise EvalError(
                "--precision picks a local model file; a server runs the precision variant it chose "
                "at load (GetModel / `pixforge models` say which)"
            )
        return ServerRunner(server, name, version, render_size=render_size)
    repo_path = Path(repo) if repo else default_repository()
    found_version, path = find_model(repo_path, name, version)
    if precision:
        path = precision_file(path, precision)
    return LocalRunner(name, found_version, path, render_size)
