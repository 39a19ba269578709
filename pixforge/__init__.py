"""pixforge: image-to-image translation (training, ONNX export, gRPC serving, clients).

The distribution maps the repository's top-level folders under this namespace:
`pixforge.service` (service/), `pixforge.training` (training/), `pixforge.clients` (clients/),
`pixforge.bench` (bench/); import rule: docs/architecture.md. The client library's public import
path is `pixforge.client`. `pixforge.codec` and `pixforge.contract` are shared by server and
clients; `pixforge.v1` holds the generated gRPC stubs. Nothing here imports torch.
"""

__version__ = "0.1.0"
