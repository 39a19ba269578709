"""gRPC inference server (torch-free): repository, onnxruntime engine, batching, tiling, servicers."""
