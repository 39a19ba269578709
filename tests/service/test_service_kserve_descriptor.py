"""protos/pixforge/kserve/v2/grpc_service.proto is wire-compatible with tritonclient's stubs.

Every message our proto defines must exist in tritonclient's descriptor with the same fields
(name, number, type, repeated, message type, oneof), and every RPC with the same path, types and
streaming flags. tritonclient is described in a subprocess (its stubs and ours cannot share one
process); ours is described here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kserve_descriptor import describe
from pixforge.service.kserve import KServeServicer

from pixforge.kserve.v2 import grpc_service_pb2 as kpb

SCRIPT = Path(__file__).resolve().parent / "kserve_triton_client.py"
RPCS = {
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
}


@pytest.fixture(scope="module")
def descriptors():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "describe"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return describe(kpb.DESCRIPTOR), json.loads(proc.stdout)


def test_messages_match_tritonclient_field_by_field(descriptors):
    ours, theirs = descriptors
    assert ours["package"] == theirs["package"] == "inference"
    assert len(ours["messages"]) >= 20  # nested types (TensorMetadata, map entries) included
    for name, fields in ours["messages"].items():
        assert name in theirs["messages"], f"{name} is not in tritonclient's protocol"
        assert fields == theirs["messages"][name], name


def test_rpcs_match_tritonclient(descriptors):
    ours, theirs = descriptors
    assert {path.rsplit("/", 1)[1] for path in ours["methods"]} == RPCS
    for path, signature in ours["methods"].items():
        assert signature == theirs["methods"].get(path), path


def test_servicer_implements_every_rpc_and_tritonclient_stays_out_of_this_process():
    assert all(name in vars(KServeServicer) for name in RPCS)
    assert "tritonclient" not in sys.modules
