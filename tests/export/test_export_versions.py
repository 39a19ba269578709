"""Repository writing: version auto-increment, explicit versions, no overwrite, atomic folders."""

from __future__ import annotations

import pytest
from export_helpers import quiet, tiny_generator

from pixforge.repository import scan_repository
from pixforge.training.export import ExportConfig, RepositoryWriteError, choose_version, export_generator

CFG = ExportConfig(task="paired_translation", verify=False)


def test_export_versions_increment_and_never_overwrite(repo):
    g = tiny_generator(arch="resnet", n_blocks=1)
    assert export_generator(g, CFG, repo, "m", log=quiet).version == 1
    assert export_generator(g, CFG, repo, "m", log=quiet).version == 2
    assert export_generator(g, CFG, repo, "m", version=7, log=quiet).version == 7
    assert export_generator(g, CFG, repo, "m", log=quiet).version == 8
    before = (repo / "m" / "2" / "model.onnx").read_bytes()
    with pytest.raises(RepositoryWriteError, match=r"already exists; versions are never overwritten"):
        export_generator(g, CFG, repo, "m", version=2, log=quiet)
    assert (repo / "m" / "2" / "model.onnx").read_bytes() == before
    assert [e.version for e in scan_repository(repo)] == [1, 2, 7, 8]
    # nothing but version folders: the temporary build folders were renamed away
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2", "7", "8"]
    assert sorted(p.name for p in (repo / "m" / "8").iterdir()) == ["model.json", "model.onnx"]


def test_export_version_numbers_are_not_reused_and_names_are_checked(repo):
    (repo / "m" / "3").mkdir(parents=True)  # a version folder without a model still takes its number
    (repo / "m" / "\u00b9").mkdir()  # not a version (str.isdigit() says it is; int() then fails)
    (repo / "m" / "samples").mkdir()
    assert choose_version(repo, "m", None) == 4
    with pytest.raises(RepositoryWriteError, match=">= 1"):
        choose_version(repo, "m", 0)
    g = tiny_generator(arch="resnet", n_blocks=1)
    for bad in ("../escape", "", ".hidden", "a/b"):
        with pytest.raises(RepositoryWriteError, match="invalid model name"):
            export_generator(g, CFG, repo, bad, log=quiet)
