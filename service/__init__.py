"""gRPC inference server (torch-free): repository, onnxruntime engine, batching, tiling, servicers.

Folder -> import name: `service/` is installed as `pixforge.service` (setup.py); its modules import
each other relatively and everything else as `pixforge.x` (docs/architecture.md).
"""
