"""Readers for the deployment files: Dockerfiles, .dockerignore, compose variable interpolation.

No Docker engine runs where the tests do, so the tests read these files the way Docker would:
the Dockerfile's instructions and stages, the context filter of .dockerignore (last matching
pattern wins, a pattern matching a parent folder matches everything below it), and compose's
``${VAR:-default}`` substitution. Each reader is small and covers the syntax our files use; the
compose checks live in deploy_compose_rules.py.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the text after the keyword (flags included)
    line: int  # 1-based line of the keyword

    @property
    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form ENTRYPOINT/CMD/RUN/HEALTHCHECK CMD, else None."""
        text = self.args.strip()
        if self.keyword == "HEALTHCHECK":
            text = re.sub(r"^(--\S+\s+)*CMD\s+", "", text)
        if not text.startswith("["):
            return None
        return json.loads(text)

    @property
    def healthcheck_test(self) -> list[str]:
        """A HEALTHCHECK's test as Docker stores it in the image and compose writes it:
        ``["CMD", argv...]`` (exec form), ``["CMD-SHELL", command]`` (shell form) or ``["NONE"]``."""
        if self.keyword != "HEALTHCHECK":
            raise ValueError(f"line {self.line}: {self.keyword} is not a HEALTHCHECK")
        text = re.sub(r"^(--\S+\s+)*", "", self.args.strip())
        if text.upper() == "NONE":
            return ["NONE"]
        command = re.sub(r"^CMD\s+", "", text)
        return ["CMD", *json.loads(command)] if command.startswith("[") else ["CMD-SHELL", command]

    def flags(self) -> dict[str, str]:
        """Leading ``--name=value`` options (COPY --from, --chown, FROM --platform...)."""
        out = {}
        for token in shlex.split(self.args):
            if not token.startswith("--"):
                break
            name, _, value = token[2:].partition("=")
            out[name] = value
        return out

    def operands(self) -> list[str]:
        """The words after the leading ``--flags``."""
        tokens = shlex.split(self.args)
        while tokens and tokens[0].startswith("--"):
            tokens.pop(0)
        return tokens


@dataclass
class Stage:
    """A build stage: ``FROM base AS name`` and its instructions."""

    base: str
    name: str
    index: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    """A parsed Dockerfile: global ARGs (before the first FROM) and the stages in order."""

    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"{self.path.name} has no stage {name!r} (stages: {[s.name for s in self.stages]})")

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, base first."""
        names = {s.name for s in self.stages}
        out = [self.stage(name)]
        while out[0].base in names:
            out.insert(0, self.stage(out[0].base))
        return out

    def needed_stages(self, name: str) -> set[str]:
        """Every stage a build of ``name`` needs (FROM chains and COPY --from sources)."""
        todo, seen = [name], set()
        while todo:
            stage = self.stage(todo.pop())
            if stage.name in seen:
                continue
            seen.add(stage.name)
            if stage.base in {s.name for s in self.stages}:
                todo.append(stage.base)
            todo += [c.flags()["from"] for c in stage.all("COPY") if "from" in c.flags()]
        return seen

    def arg_default(self, name: str, stage: str | None = None) -> str | None:
        """Default of an ARG: the stage's own declaration, else the global one."""
        if stage is not None:
            for ins in self.stage(stage).all("ARG"):
                key, sep, value = ins.args.strip().partition("=")
                if key == name and sep:
                    return _unquote(value)
        return self.global_args.get(name)

    def env(self, name: str) -> dict[str, str]:
        """ENV of a stage, inherited along its FROM chain, in the ``key=value`` form we use."""
        env: dict[str, str] = {}
        for stage in self.chain(name):
            for ins in stage.all("ENV"):
                for token in shlex.split(ins.args):
                    key, sep, value = token.partition("=")
                    if not sep:
                        raise ValueError(f"{self.path.name}:{ins.line}: use ENV key=value, got {ins.args!r}")
                    env[key] = value
        return env

    def last(self, name: str, keyword: str) -> Instruction | None:
        """The effective (last) ``keyword`` instruction along a stage's FROM chain."""
        found = None
        for stage in self.chain(name):
            for ins in stage.all(keyword):
                found = ins
        return found


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def parse_dockerfile(path: Path) -> Dockerfile:
    """Parse a Dockerfile into global ARGs and stages.

    Comment lines (also inside a continued instruction, as Docker allows) are dropped; a trailing
    backslash joins the next line.
    """
    instructions: list[Instruction] = []
    buffer, start = "", 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, args = buffer.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = ""
    if buffer:
        raise ValueError(f"{path.name}: the last instruction ends with a line continuation")

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.operands()
            if len(words) == 3 and words[1].upper() == "AS":
                stages.append(Stage(words[0], words[2], len(stages)))
            elif len(words) == 1:
                stages.append(Stage(words[0], str(len(stages)), len(stages)))
            else:
                raise ValueError(f"{path.name}:{ins.line}: cannot read FROM {ins.args!r}")
        elif not stages:
            if ins.keyword != "ARG":
                raise ValueError(f"{path.name}:{ins.line}: only ARG may come before the first FROM")
            key, _, value = ins.args.partition("=")
            global_args[key.strip()] = _unquote(value)
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(path, global_args, stages)


def expand_args(text: str, values: dict[str, str]) -> str:
    """Substitute ``${NAME}`` / ``$NAME`` build args (unknown names stay as they are)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def healthcheck_argv(test: list[str], env: dict[str, str], stub_dir: Path) -> list[str]:
    """The command line a healthcheck test starts in a container whose environment is ``env``.

    ``["CMD", ...]`` runs as it is; ``["CMD-SHELL", command]`` runs as Docker runs it, through
    ``/bin/sh -c`` with the container's environment (variables expanded by a real shell), with
    ``pixforge`` on PATH a stub in ``stub_dir`` that writes out its arguments instead of probing.
    """
    kind, *rest = test
    if kind == "CMD":
        return rest
    if kind != "CMD-SHELL" or len(rest) != 1:
        raise ValueError(f"not a healthcheck command: {test!r}")
    stub = stub_dir / "pixforge"
    stub.write_text('#!/bin/sh\nprintf "%s\\0" "$@"\n', encoding="utf-8")
    stub.chmod(0o755)
    shell_env = {**env, "PATH": f"{stub_dir}:/usr/bin:/bin"}
    result = subprocess.run(
        ["/bin/sh", "-c", rest[0]], env=shell_env, capture_output=True, timeout=30, check=True
    )
    return ["pixforge", *result.stdout.decode().split("\0")[:-1]]


def image_tag(image: str) -> str:
    """The tag of an image reference, or its digest; "" when it has neither (Docker pulls :latest)."""
    if "@" in image:
        return image.split("@", 1)[1]
    return image.rsplit("/", 1)[-1].partition(":")[2]


# --------------------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


@dataclass
class DockerIgnore:
    """The context filter of a .dockerignore file (Docker's rules for the syntax we use)."""

    patterns: list[tuple[bool, re.Pattern, str]]  # (is_exception, regex, source text)

    @classmethod
    def read(cls, path: Path) -> DockerIgnore:
        patterns = []
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            text = line[1:].strip() if negate else line
            text = text.strip("/") or "."
            patterns.append((negate, _pattern_regex(text), line))
        return cls(patterns)

    def excluded(self, relpath: str) -> bool:
        """Whether a context path (``a/b/c.py``) is left out of the build context."""
        parts = relpath.strip("/").split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for negate, regex, _ in self.patterns:
            if any(regex.match(c) for c in candidates):
                result = not negate
        return result


# --------------------------------------------------------------------------- compose interpolation

_VAR = re.compile(r"\$\$|\$\{(?P<braced>[^}]*)\}|\$(?P<plain>[A-Za-z_][A-Za-z0-9_]*)")


def compose_variables(text: str) -> dict[str, str | None]:
    """Every variable a compose file interpolates, with its ``:-``/``-`` default (None: no default)."""
    found: dict[str, str | None] = {}
    for m in _VAR.finditer(text):
        if m.group(0) == "$$":
            continue
        expr = m.group("braced") if m.group("braced") is not None else m.group("plain")
        name, op, default = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:-|-|:\?|\?)?(.*)", expr).groups()
        found[name] = default if op in (":-", "-") else found.get(name)
    return found


def interpolate(value, env: dict[str, str]):
    """Compose-style substitution of ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$$``.

    Applied to every string inside nested lists/dicts, as compose does after parsing the YAML.
    """
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        expr = m.group("braced") if m.group("braced") is not None else m.group("plain")
        name, op, default = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:-|-|:\?|\?)?(.*)", expr).groups()
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        if op in (":?", "?") and not env.get(name):
            raise KeyError(f"compose variable {name} is required: {default}")
        return env.get(name, "")

    return _VAR.sub(sub, value)


def parse_duration(text) -> float:
    """Seconds of a compose duration such as ``1m30s``, ``120s``, ``500ms``."""
    if isinstance(text, (int, float)):
        return float(text)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        raise ValueError(f"not a compose duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


# --------------------------------------------------------------------------- setup.py / pyproject.toml


def pyproject_project() -> dict:
    """The ``[project]`` table of pyproject.toml (tomllib: Python >= 3.11; older ones skip the test)."""
    import pytest

    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def setup_folders() -> dict[str, str]:
    """setup.py's FOLDERS map (folder -> package), read without running setup()."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "FOLDERS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py defines no FOLDERS map")


# --------------------------------------------------------------------------- test fixtures' helpers


def write_tiny_model(path: Path) -> Path:
    """A contract-valid model (255 - x on uint8 RGB) built with onnx.helper; no torch.

    Args:
        path: where model.onnx goes (``<repo>/<name>/<version>/model.onnx``).
    """
    from onnx import TensorProto, helper
    from onnx_models import contract_metadata, save_model

    from pixforge.contract import INPUT_NAME, OUTPUT_NAME

    def const(name, value):
        return helper.make_tensor(name, TensorProto.FLOAT, [], [value])

    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["k255", "f"], ["g"]),
        helper.make_node("Clip", ["g", "lo", "hi"], ["c"]),
        helper.make_node("Cast", ["c"], [OUTPUT_NAME], to=TensorProto.UINT8),
    ]
    inits = [const("k255", 255.0), const("lo", 0.0), const("hi", 255.0)]
    meta = contract_metadata("paired_translation", 1, 3, 3, 4, 64, description="deploy test model")
    return save_model(path, nodes, inits, 3, 3, meta)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- compose services


def port_parts(spec) -> tuple[str, int]:
    """(published part, container port) of a short-syntax port such as ``127.0.0.1:9090:9090``."""
    text = str(spec).split("/")[0]
    published, _, container = text.rpartition(":")
    return published, int(container)


def bind_mounts(service: dict, base: Path = REPO) -> list[tuple[Path, str, str]]:
    """(host path, container path, mode) of a service's bind mounts; named volumes are skipped."""
    mounts = []
    for vol in service.get("volumes", []):
        parts = str(vol).split(":")
        if len(parts) >= 2 and parts[0].startswith((".", "/")):
            mounts.append(((base / parts[0]).resolve(), parts[1], parts[2] if len(parts) > 2 else "rw"))
    return mounts


def to_host_path(container_path: str, mounts: list[tuple[Path, str, str]]) -> Path | None:
    """The host path a container path lands on through the bind mounts (longest prefix wins)."""
    best = None
    for host, target, _mode in mounts:
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            if best is None or len(target) > len(best[1]):
                best = (host, target)
    if best is None:
        return None
    rest = container_path[len(best[1]) :].lstrip("/")
    return best[0] / rest if rest else best[0]


def service_environment(service: dict) -> dict[str, str]:
    """A service's ``environment`` (mapping or list form) as strings; unset (null) entries left out."""
    env = service.get("environment", {}) or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    out = {}
    for key, value in env.items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out
