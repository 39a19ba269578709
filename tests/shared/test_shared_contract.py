"""The model contract: valid models parse, each broken rule is refused with a clear message."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pixforge.contract import ModelContract, TensorSpec, load_contract, parse_contract
from pixforge.errors import ContractError

GOOD_META = ModelContract("paired_translation", 1, 3, 3, 4, 256).to_metadata()
IN = TensorSpec("image", "uint8", ("N", "H", "W", 3))
OUT = TensorSpec("image_out", "uint8", ("N", "H", "W", 3))


def test_good_contract_parses_and_round_trips():
    c = parse_contract(GOOD_META, [IN], [OUT])
    assert (c.task, c.scale, c.input_channels, c.size_multiple, c.tile_size) == (
        "paired_translation",
        1,
        3,
        4,
        256,
    )
    assert parse_contract(c.to_metadata(), [IN], [OUT]) == c


@pytest.mark.parametrize(
    "change,message",
    [
        ({"task": "denoise"}, "task"),
        ({"scale": "two"}, "integer"),
        ({"scale": "2"}, "scale 1"),
        ({"input_channels": "2"}, "input_channels"),
        ({"tile_size": "250"}, "multiple"),
        ({"pixforge.contract": "9"}, "version"),
    ],
)
def test_bad_metadata_is_refused(change, message):
    with pytest.raises(ContractError, match=message):
        parse_contract({**GOOD_META, **change}, [IN], [OUT])


def test_missing_metadata_names_the_keys():
    meta = dict(GOOD_META)
    del meta["size_multiple"], meta["task"]
    with pytest.raises(ContractError, match="missing task, size_multiple"):
        parse_contract(meta, [IN], [OUT])


@pytest.mark.parametrize(
    "spec,message",
    [
        (TensorSpec("image", "float32", ("N", "H", "W", 3)), "uint8"),
        (TensorSpec("image", "uint8", ("N", 3, "H", "W")), "NHWC"),
        (TensorSpec("image", "uint8", ("N", "H", "W")), "4-D"),
        (TensorSpec("image", "uint8", (1, "H", "W", 3)), "dynamic batch"),
    ],
)
def test_bad_signature_is_refused(spec, message):
    with pytest.raises(ContractError, match=message):
        parse_contract(GOOD_META, [spec], [OUT])


def _invert_model(path, meta, in_type=TensorProto.UINT8):
    x = helper.make_tensor_value_info("image", in_type, ["N", "H", "W", 3])
    y = helper.make_tensor_value_info("image_out", TensorProto.UINT8, ["N", "H", "W", 3])
    full = helper.make_tensor("full", TensorProto.UINT8, [], [255])
    nodes = [
        helper.make_node("Cast", ["image"], ["xu"], to=TensorProto.UINT8),
        helper.make_node("Sub", ["full", "xu"], ["image_out"]),
    ]
    graph = helper.make_graph(nodes, "invert", [x], [y], initializer=[full])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, meta)
    onnx.save(model, path)


def test_load_contract_from_onnx_file(tmp_path):
    _invert_model(tmp_path / "ok.onnx", GOOD_META)
    assert load_contract(tmp_path / "ok.onnx").task == "paired_translation"
    _invert_model(tmp_path / "float.onnx", GOOD_META, in_type=TensorProto.FLOAT)
    with pytest.raises(ContractError, match="uint8"):
        load_contract(tmp_path / "float.onnx")
    _invert_model(tmp_path / "nometa.onnx", {})
    with pytest.raises(ContractError, match="not a pixforge model"):
        load_contract(tmp_path / "nometa.onnx")
    (tmp_path / "junk.onnx").write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    with pytest.raises(ContractError, match="not a loadable ONNX model"):
        load_contract(tmp_path / "junk.onnx")
    with pytest.raises(ContractError, match="no model file"):
        load_contract(tmp_path / "absent.onnx")
