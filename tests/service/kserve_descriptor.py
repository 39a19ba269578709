"""Describe a protobuf file's messages and RPCs as plain JSON-able data (shared by both sides of
the KServe descriptor-compatibility test; imports neither pixforge's nor tritonclient's stubs)."""

from __future__ import annotations


def _enum(desc, prefix: str, out: dict) -> None:
    out[prefix + desc.name] = sorted([v.name, v.number] for v in desc.values)


def _message(desc, prefix: str, out: dict, enums: dict) -> None:
    name = prefix + desc.name
    out[name] = sorted(
        [
            f.name,
            f.number,
            f.type,
            f.is_repeated,
            (f.message_type or f.enum_type).full_name if (f.message_type or f.enum_type) else "",
            f.containing_oneof.name if f.containing_oneof else "",
        ]
        for f in desc.fields
    )
    for nested in desc.nested_types:
        _message(nested, name + ".", out, enums)
    for nested in desc.enum_types:
        _enum(nested, name + ".", enums)


def describe(file_descriptor) -> dict:
    """{"package", "messages": {name: [[field, number, type, repeated, message/enum type, oneof], ...]},
    "enums": {name: [[value, number], ...]},
    "methods": {"/pkg.Service/Method": [input, output, client streaming, server streaming]}}."""
    messages: dict = {}
    enums: dict = {}
    for desc in file_descriptor.message_types_by_name.values():
        _message(desc, "", messages, enums)
    for desc in file_descriptor.enum_types_by_name.values():
        _enum(desc, "", enums)
    methods = {
        f"/{service.full_name}/{m.name}": [
            m.input_type.full_name,
            m.output_type.full_name,
            m.client_streaming,
            m.server_streaming,
        ]
        for service in file_descriptor.services_by_name.values()
        for m in service.methods
    }
    return {"package": file_descriptor.package, "messages": messages, "enums": enums, "methods": methods}
