"""docs/deploy.md says what the code does: commands parse, metrics exist, the fallback log line is real."""

from __future__ import annotations

import ctypes
import re
import shlex

import pytest
from deploy_helpers import REPO

from pixforge.cli import build_parser

DOCS = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")


def _shell_lines() -> list[str]:
    """Lines of the ```bash blocks, continuation lines joined, comments dropped."""
    lines, joined = [], ""
    for block in re.findall(r"```bash\n(.*?)```", DOCS, re.DOTALL):
        for raw in block.splitlines():
            line = raw.split("  #")[0].rstrip()
            if line.startswith("#") or not line.strip():
                continue
            if line.endswith("\\"):
                joined += line[:-1] + " "
                continue
            lines.append((joined + line).strip())
            joined = ""
    return lines


def _pixforge_invocations() -> list[list[str]]:
    """Every `pixforge ...` and `... run --rm trainer ...` command of the shell blocks, as argv."""
    found = []
    for line in _shell_lines():
        for part in re.split(r"&&|\|\||;", line):
            words = shlex.split(part)
            while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value prefixes
                words.pop(0)
            if words[:1] == ["pixforge"]:
                found.append(words[1:])
            elif words[:2] == ["docker", "compose"] and "run" in words and "trainer" in words:
                found.append(words[words.index("trainer") + 1 :])
    return found


def test_documented_commands_parse():
    invocations = _pixforge_invocations()
    assert {argv[0] for argv in invocations} >= {"health", "convert", "models", "train", "export"}
    parser = build_parser()
    for argv in invocations:
        parser.parse_args(argv)  # exits (fails the test) on an unknown flag or a missing argument


def test_documented_metrics_exist():
    from pixforge.service.metrics import Metrics

    families = {}
    for family in Metrics().registry.collect():
        families[family.name] = family.type
    # pixforge's families and Triton's (nv_*); the process/runtime collectors are named in prose.
    ours = {name: kind for name, kind in families.items() if name.startswith(("pixforge_", "nv_"))}
    exposed = {name + ("_total" if kind == "counter" else "") for name, kind in ours.items()}
    table = set(re.findall(r"^\| `((?:pixforge|nv)_\w+)", DOCS, re.MULTILINE))
    assert table == exposed, f"undocumented: {exposed - table}; not served: {table - exposed}"
    assert {"process_cpu_seconds", "python_info"} <= set(families)
    (promql,) = re.findall(r"```promql\n(.*?)```", DOCS, re.DOTALL)
    names = re.findall(r"\b(?:pixforge|nv|process)_\w+", promql)
    # A sample name is its family's, or the family's plus a suffix (nv_inference_count is a family).
    queried = {n if n in families else re.sub(r"_(bucket|sum|count|total)$", "", n) for n in names}
    assert queried and queried <= set(families), (
        f"example queries use unknown metrics {queried - set(families)}"
    )


def test_documented_cpu_fallback_line_is_what_the_server_logs(monkeypatch):
    """The troubleshooting table quotes the start-up line of a GPU image that sees no driver."""
    import onnxruntime

    from pixforge.service import engine
    from pixforge.service.config import EngineConfig

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (the GPU image's build)")
    real_cdll = ctypes.CDLL

    def no_driver(name, *args, **kwargs):
        if name == "libcuda.so.1":
            raise OSError("libcuda.so.1: cannot open shared object file: No such file or directory")
        return real_cdll(name, *args, **kwargs)

    monkeypatch.setattr(engine, "_gpu_status", None)
    monkeypatch.setattr(ctypes, "CDLL", no_driver)
    line = engine.gpu_log_line(EngineConfig())
    monkeypatch.setattr(engine, "_gpu_status", None)  # let later tests probe the real machine
    assert line.startswith("execution provider: CPU (")
    assert f"`{line}`" in DOCS


def test_every_service_and_profile_is_explained(compose):
    for name, svc in compose["services"].items():
        assert f"`{name}`" in DOCS, name
        for profile in svc.get("profiles", []):
            assert f"`{profile}`" in DOCS, profile
    for path in (
        "deploy/server.yaml",
        "deploy/prometheus.yml",
        "deploy/envoy.yaml",
        "deploy/pixforge.env.example",
    ):
        assert (REPO / path).is_file() and path.split("/")[1] in DOCS
