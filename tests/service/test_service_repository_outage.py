"""A model repository that vanishes (unmounted volume, stale network mount, unreadable folder) keeps
the loaded models serving; when it is back, unchanged files stay loaded as they are and changed
ones reload beside the serving ones. A model folder removed from a repository that is still there
is a real removal."""

from __future__ import annotations

import errno
import logging
import shutil
import threading
import time
from pathlib import Path

import grpc
import pytest
from service_helpers import EngineControl, build_invert, png, rgb_image, test_config, wait_for

from pixforge.v1 import translation_pb2 as pb

LOGGER = "pixforge.service.repository"


def request(model: str) -> pb.TranslateRequest:
    return pb.TranslateRequest(model=model, image=png(rgb_image(8, 8)))


def two_model_repo(path: Path) -> Path:
    build_invert(path / "invert" / "1" / "model.onnx")
    build_invert(path / "other" / "1" / "model.onnx")
    return path


class Records(logging.Handler):
    """Collects the registry's log records (the server's `pixforge` logger does not propagate)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def records():
    handler = Records()
    logger = logging.getLogger(LOGGER)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_vanished_repository_keeps_serving_and_unchanged_models_stay_loaded(start_server, tmp_path, records):
    repo = two_model_repo(tmp_path / "models")
    control = EngineControl()
    handle, stub = start_server(test_config(repo), control)
    invert, other = handle.registry.runtime("invert"), handle.registry.runtime("other")

    parked = tmp_path / "parked"
    repo.rename(parked)  # the volume is gone
    for _ in range(3):
        summary = handle.reload()
        assert stub.Translate(request("invert"), timeout=5).version == 1
        assert stub.Translate(request("other"), timeout=5).version == 1
        assert summary.removed == [] and summary.loaded == []
        assert "not a directory" in summary.unavailable
    assert "not a directory" in handle.registry.unavailable
    warnings = records.at(logging.WARNING)
    assert len(warnings) == 1 and "keep serving" in warnings[0], warnings  # once, not per poll
    assert not records.at(logging.ERROR)

    parked.rename(repo)  # back, with one model's file changed meanwhile
    time.sleep(0.01)
    build_invert(repo / "other" / "1" / "model.onnx", tile=32)
    gate = control.load_gates["other"] = threading.Event()
    result: list = []
    reloader = threading.Thread(target=lambda: result.append(handle.reload()))
    reloader.start()
    try:
        # While the changed file loads, both models keep answering (no FAILED_PRECONDITION window).
        for _ in range(3):
            assert stub.Translate(request("invert"), timeout=5).version == 1
            assert stub.Translate(request("other"), timeout=5).version == 1
        assert reloader.is_alive()
    finally:
        gate.set()
    reloader.join(30)
    summary = result[0]
    assert summary.unchanged == ["invert/1"] and summary.loaded == ["other/1"] and summary.removed == []
    assert handle.registry.runtime("invert") is invert  # kept as it was, not reloaded
    assert handle.registry.runtime("other") is not other
    assert stub.GetModel(pb.GetModelRequest(name="other"), timeout=5).model.tile_size == 32
    assert summary.unavailable == "" and handle.registry.unavailable == ""
    assert any("available again" in m for m in records.at(logging.INFO))


def test_remount_showing_an_empty_folder_keeps_serving(start_server, tmp_path, records):
    repo = two_model_repo(tmp_path / "models")
    handle, stub = start_server(test_config(repo))
    invert = handle.registry.runtime("invert")

    parked = tmp_path / "parked"
    repo.rename(parked)
    (repo / ".trt_cache").mkdir(parents=True)  # an empty mount point (hidden entries do not count)
    summary = handle.reload()
    assert summary.removed == []
    assert stub.Translate(request("invert"), timeout=5).version == 1
    assert stub.Translate(request("other"), timeout=5).version == 1
    assert len(records.at(logging.WARNING)) == 1
    assert "empty" in summary.unavailable

    shutil.rmtree(repo)
    parked.rename(repo)
    summary = handle.reload()
    assert summary.unchanged == ["invert/1", "other/1"] and not summary.loaded and not summary.removed
    assert handle.registry.runtime("invert") is invert


def test_unreadable_repository_is_logged_once_across_polls(start_server, tmp_path, monkeypatch, records):
    import pixforge.service.repository as registry_module

    repo = two_model_repo(tmp_path / "models")
    handle, stub = start_server(test_config(repo, poll_seconds=0.02))
    invert = handle.registry.runtime("invert")
    polls = []

    def stale(path):
        polls.append(path)
        raise OSError(errno.ESTALE, "Stale file handle", str(path))

    real_scan = registry_module.scan_repository
    monkeypatch.setattr(registry_module, "scan_repository", stale)
    assert wait_for(lambda: len(polls) >= 10)
    assert stub.Translate(request("invert"), timeout=5).version == 1
    assert stub.Translate(request("other"), timeout=5).version == 1
    assert not records.at(logging.ERROR)  # no "repository poll failed" traceback per poll
    warnings = records.at(logging.WARNING)
    assert len(warnings) == 1 and "Stale file handle" in warnings[0], warnings
    assert "Stale file handle" in handle.registry.unavailable

    monkeypatch.setattr(registry_module, "scan_repository", real_scan)
    assert wait_for(lambda: handle.registry.unavailable == "")
    assert handle.registry.runtime("invert") is invert
    assert stub.Translate(request("other"), timeout=5).version == 1


def test_model_folder_removed_from_present_repository_is_unloaded(start_server, tmp_path):
    repo = two_model_repo(tmp_path / "models")
    handle, stub = start_server(test_config(repo))

    shutil.rmtree(repo / "other")
    summary = handle.reload()
    assert summary.removed == ["other/1"]
    with pytest.raises(grpc.RpcError) as info:
        stub.Translate(request("other"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert stub.Translate(request("invert"), timeout=5).version == 1

    # Every model folder removed from a repository that still lists a file: all are unloaded.
    (repo / "README.md").write_text("models go here\n")
    shutil.rmtree(repo / "invert")
    assert handle.reload().removed == ["invert/1"]
    with pytest.raises(grpc.RpcError) as info:
        stub.Translate(request("invert"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
