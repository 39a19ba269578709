"""gRPC server reflection: ``grpc.reflection.v1alpha`` and ``grpc.reflection.v1`` beside it.

grpcio-reflection (1.81) ships only the v1alpha service. ``grpc.reflection.v1`` is the same
protocol under another package name: its messages are field for field the v1alpha ones, so their
bytes on the wire are identical. pixforge therefore answers
``/grpc.reflection.v1.ServerReflection/ServerReflectionInfo`` with the library's own v1alpha
servicer and message classes, and clients that ask for v1 first (grpcurl, grpcui, Postman) get
their answer without falling back to v1alpha.

The v1 service is callable but not listed by ``list_services``, and its descriptor is not served:
registering a copy of the reflection descriptor under the v1 name in protobuf's default pool
could clash with a later grpcio-reflection that ships it.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME  # "grpc.reflection.v1alpha.ServerReflection"
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"


def enable_reflection(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    """Serve reflection (v1alpha and v1) for ``service_names`` on a grpc.aio server (not started).

    Args:
        service_names: the full names ``list_services`` answers (the v1alpha service is added).
        server: the server.
    """
    names = list(dict.fromkeys([*service_names, V1ALPHA_SERVICE_NAME]))
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE_NAME,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))
