"""Generated protobuf/gRPC stubs (tools/codegen.py); do not edit."""
