"""third_party/kserve/pixforge/kserve/v2/grpc_service.proto is wire-compatible with tritonclient's stubs.

Every message our proto defines must exist in tritonclient's descriptor with the same fields
(name, number, type, repeated, message type, oneof), and every RPC with the same path, types and
streaming flags: all 20 of Triton's GRPCInferenceService. model_config.proto holds a subset of
Triton's model configuration: each of its messages, fields and enum values must exist in
tritonclient's with the same number and type. tritonclient is described in a subprocess (its stubs
and ours cannot share one process); ours is described here.
"""

from __future__ import annotations

import json
import sys

import pytest
from kserve_descriptor import describe
from service_helpers import run_triton_client

from pixforge.kserve.v2 import grpc_service_pb2 as kpb
from pixforge.kserve.v2 import model_config_pb2
from pixforge.service.kserve import KServeServicer

RPCS = {
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
}


@pytest.fixture(scope="module")
def descriptors():
    theirs = json.loads(run_triton_client("describe", timeout=60))
    return (
        describe(kpb.DESCRIPTOR),
        theirs["service"],
        describe(model_config_pb2.DESCRIPTOR),
        theirs["model_config"],
    )


def test_messages_match_tritonclient_field_by_field(descriptors):
    ours, theirs, _, _ = descriptors
    assert ours["package"] == theirs["package"] == "inference"
    assert len(ours["messages"]) >= 20  # nested types (TensorMetadata, map entries) included
    for name, fields in ours["messages"].items():
        assert name in theirs["messages"], f"{name} is not in tritonclient's protocol"
        assert fields == theirs["messages"][name], name


def test_rpcs_match_tritonclient(descriptors):
    ours, theirs, _, _ = descriptors
    assert {path.rsplit("/", 1)[1] for path in ours["methods"]} == RPCS
    assert set(ours["methods"]) == set(theirs["methods"])  # every RPC of Triton's service
    for path, signature in ours["methods"].items():
        assert signature == theirs["methods"].get(path), path


def test_model_config_is_a_subset_of_tritonclients(descriptors):
    _, _, ours, theirs = descriptors
    assert ours["package"] == theirs["package"] == "inference"
    assert {"ModelConfig", "ModelInput", "ModelOutput", "ModelDynamicBatching"} <= set(ours["messages"])
    for name, fields in ours["messages"].items():
        assert name in theirs["messages"], f"{name} is not in tritonclient's model_config"
        missing = [f for f in fields if f not in theirs["messages"][name]]
        assert not missing, f"{name}: fields not in tritonclient's: {missing}"
    assert {"DataType", "ModelInput.Format", "ModelInstanceGroup.Kind"} <= set(ours["enums"])
    for name, values in ours["enums"].items():
        assert values == theirs["enums"][name], name


def test_servicer_implements_every_rpc_and_tritonclient_stays_out_of_this_process():
    assert all(name in vars(KServeServicer) for name in RPCS)
    # tritonclient.http (the HTTP front's tests) has no protobuf stubs; tritonclient.grpc must stay out.
    assert not [m for m in sys.modules if m.startswith("tritonclient.grpc")]
