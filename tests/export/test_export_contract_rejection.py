"""Models that break the contract are refused: by load_contract, by `pixforge models`, by the exporter."""

from __future__ import annotations

import onnx
import pytest
from export_helpers import quiet, tiny_generator
from onnx import TensorProto, helper

from pixforge.cli import main
from pixforge.contract import ModelContract, load_contract
from pixforge.errors import ContractError
from pixforge.training.export import ExportConfig, ExportError, export_generator

GOOD_META = ModelContract(
    task="paired_translation", scale=1, input_channels=3, output_channels=3, size_multiple=1, tile_size=64
).to_metadata()


def _identity_model(path, in_type=TensorProto.UINT8, channels=3, metadata=GOOD_META):
    """A hand-built one-node graph (Identity), contract-conformant unless told otherwise."""
    x = helper.make_tensor_value_info("image", in_type, ["batch", "height", "width", channels])
    y = helper.make_tensor_value_info("image_out", in_type, ["batch", "height", "width", channels])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["image_out"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, dict(metadata))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


BROKEN = {
    "float_input": ({"in_type": TensorProto.FLOAT}, "must be uint8"),
    "missing_metadata": ({"metadata": {k: v for k, v in GOOD_META.items() if k != "task"}}, "missing task"),
    "wrong_channels": ({"channels": 1}, "has 1 channels but metadata says 3"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_export_broken_model_is_rejected_by_load_contract(case, tmp_path):
    kwargs, message = BROKEN[case]
    path = _identity_model(tmp_path / "m.onnx", **kwargs)
    with pytest.raises(ContractError, match=message):
        load_contract(path)


def test_export_models_list_marks_broken_models_invalid(repo, capsys):
    _identity_model(repo / "good" / "1" / "model.onnx")
    for case, (kwargs, _) in BROKEN.items():
        _identity_model(repo / case / "1" / "model.onnx", **kwargs)
    (repo / "garbage" / "1").mkdir(parents=True)
    (repo / "garbage" / "1" / "model.onnx").write_bytes(b"not an onnx file")

    assert main(["models", "list", "--repo", str(repo)]) == 1
    out = capsys.readouterr()
    rows = {line.split()[0]: line for line in out.out.splitlines()[2:] if line and not line.startswith("(")}
    assert rows["good"].rstrip().endswith("OK")
    for case, (_, message) in BROKEN.items():
        assert "INVALID" in rows[case] and message in rows[case], rows[case]
    assert "INVALID: " in rows["garbage"] and "not a loadable ONNX model" in rows["garbage"]
    assert "server will not load them" in out.err


def test_export_models_show_explains_an_invalid_model(repo, capsys):
    _identity_model(repo / "bad" / "1" / "model.onnx", in_type=TensorProto.FLOAT)
    assert main(["models", "show", "bad", "--repo", str(repo)]) == 1
    out = capsys.readouterr().out
    assert "status: INVALID: input 'image' must be uint8" in out
    assert "tensor(float)" in out  # the signature is still printed


def test_export_models_cli_reports_missing_repo_and_unknown_name(repo, tmp_path, capsys):
    assert main(["models", "list", "--repo", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    _identity_model(repo / "good" / "1" / "model.onnx")
    assert main(["models", "show", "other", "--repo", str(repo)]) == 2
    assert "no model named 'other'" in capsys.readouterr().err
    assert main(["models", "show", "good", "--version", "3", "--repo", str(repo)]) == 2


def test_export_refuses_a_generator_that_breaks_the_contract(repo):
    # a 3 -> 2 channel generator exported as RGB -> RGB: refused before anything is written
    generator = tiny_generator(arch="unet", depth=3, out_channels=2)
    with pytest.raises(ExportError, match=r"needs \(1, 3, 32, 32\)"):
        export_generator(generator, ExportConfig(task="paired_translation"), repo, "bad", log=quiet)
    # an RGB generator declared as colourisation: it cannot take the 1-channel L input
    with pytest.raises(ExportError, match="cannot run on a"):
        export_generator(
            tiny_generator(arch="unet", depth=3),
            ExportConfig(task="colorization", color_space="lab"),
            repo,
            "bad",
            log=quiet,
        )
    with pytest.raises(ExportError, match="scale must be"):
        ExportConfig(task="paired_translation", scale=2)
    assert not any(repo.rglob("*.onnx"))


def test_export_models_list_marks_the_highest_valid_version(repo, capsys):
    _identity_model(repo / "m" / "1" / "model.onnx")
    _identity_model(repo / "m" / "2" / "model.onnx")
    _identity_model(repo / "m" / "3" / "model.onnx", in_type=TensorProto.FLOAT)  # broken newest
    assert main(["models", "list", "--repo", str(repo)]) == 1
    versions = [line.split()[1] for line in capsys.readouterr().out.splitlines()[2:5]]
    assert versions == ["1", "2*", "3"]
