"""Dockerfile, Dockerfile.train and .dockerignore: stages, paths, users, versions, no torch for serving."""

from __future__ import annotations

import ipaddress
import re
import shlex

import pytest
from deploy_helpers import (
    REPO,
    DockerIgnore,
    expand_args,
    healthcheck_argv,
    parse_duration,
    pyproject_project,
    setup_folders,
)
from packaging.requirements import Requirement
from packaging.version import Version

from pixforge.cli import COMMANDS, build_parser
from pixforge.service.config import ENV_ALIASES, ServiceConfig, build_config, config_keys, env_name, read_env

SERVER_TARGETS = ("server-gpu", "server-cpu")


def _pyproject_requirement(name: str, extra: str | None = None) -> Requirement:
    project = pyproject_project()
    deps = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return next(r for r in map(Requirement, deps) if r.name == name)


def _pip_install_words(run_args: str) -> list[str]:
    """Every operand of every `pip install` in a RUN line (flags left out)."""
    words = []
    for command in re.split(r"&&|;|\|\|", run_args):
        tokens = shlex.split(command)
        if "pip" in tokens and "install" in tokens[tokens.index("pip") :]:
            words += [
                t for t in tokens[tokens.index("install", tokens.index("pip")) + 1 :] if not t.startswith("-")
            ]
    return words


# --------------------------------------------------------------------------- stages


def test_server_stages(dockerfile):
    names = [s.name for s in dockerfile.stages]
    assert len(names) == len(set(names))
    assert set(SERVER_TARGETS) <= set(names)
    assert names[-1] == "server-gpu", "a plain `docker build .` must produce the GPU server"
    for stage in dockerfile.stages:
        assert stage.base in names[: stage.index] or stage.base == "${PYTHON_IMAGE}", stage.name
        for copy in stage.all("COPY"):
            source = copy.flags().get("from")
            assert source is None or source in names[: stage.index], f"COPY --from={source} in {stage.name}"


@pytest.mark.parametrize("path", ["Dockerfile", "Dockerfile.train"])
def test_base_image_is_python_slim(path, dockerfile, dockerfile_train):
    parsed = dockerfile if path == "Dockerfile" else dockerfile_train
    image = parsed.global_args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.(1[1-9])-slim-\w+", image), image
    # onnxruntime-gpu >= 1.25 needs Python >= 3.11; the package itself needs >= 3.10.
    assert Version(image.split(":")[1].split("-")[0]) >= Version("3.11")


def test_every_copied_path_exists_and_survives_dockerignore(dockerfile, dockerfile_train):
    ignore = DockerIgnore.read(REPO / ".dockerignore")
    for parsed in (dockerfile, dockerfile_train):
        for stage in parsed.stages:
            for copy in stage.all("COPY"):
                if "from" in copy.flags():
                    continue
                for source in copy.operands()[:-1]:
                    path = REPO / source
                    assert path.exists(), f"{parsed.path.name}:{copy.line}: COPY {source}: no such path"
                    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                    kept = [f for f in files if not ignore.excluded(str(f.relative_to(REPO)))]
                    assert kept or not files, (
                        f"{parsed.path.name}:{copy.line}: .dockerignore drops all of {source}"
                    )
                    if path.is_file():
                        assert kept, f".dockerignore drops {source}"


def test_dockerignore_keeps_local_state_out():
    ignore = DockerIgnore.read(REPO / ".dockerignore")
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "runs/facades-001/config.json",
        "data/x.png",
        "tests/conftest.py",
        "service/__pycache__/server.cpython-312.pyc",
        ".env",
        "pixforge.egg-info/PKG-INFO",
        "models/.trt_cache/engine.bin",
        "pixforge/v1/translation_pb2.py",  # a local install's stubs: the image generates its own
        "pixforge/kserve/v2/grpc_service_pb2_grpc.py",
    ):
        assert ignore.excluded(path), f"{path} would be sent to the Docker daemon"
    for path in (
        "pyproject.toml",
        "service/server.py",
        "pixforge/v1/__init__.py",
        "protos/pixforge/v1/translation.proto",
        "third_party/kserve/pixforge/kserve/v2/grpc_service.proto",
        "tools/codegen.py",
        "training/configs/facades.yaml",
        "models/x/1/model.onnx",
        "deploy/check_gpu_libs.py",
    ):
        assert not ignore.excluded(path), f"{path} is needed by the build"


@pytest.mark.parametrize("path", ["Dockerfile", "Dockerfile.train"])
def test_wheel_stage_copies_every_package_folder(path, dockerfile, dockerfile_train):
    parsed = dockerfile if path == "Dockerfile" else dockerfile_train
    copied = {src.strip("/") for c in parsed.stage("wheel").all("COPY") for src in c.operands()[:-1]}
    needed = {"pyproject.toml", "setup.py", "README.md", "pixforge", *setup_folders()}
    needed |= {"tools/codegen.py", "protos", "third_party"}  # the build generates the gRPC stubs
    assert needed <= copied, f"the wheel would miss {needed - copied}"


# --------------------------------------------------------------------------- the server images


@pytest.mark.parametrize("target", SERVER_TARGETS)
def test_server_runs_as_non_root(dockerfile, target):
    user = dockerfile.stage(target).all("USER")
    assert user and user[-1].args not in ("root", "0", "0:0"), f"{target} must end with a non-root USER"
    runs_after_user = [
        i for i in dockerfile.stage(target).instructions if i.keyword == "RUN" and i.line > user[-1].line
    ]
    assert not runs_after_user


@pytest.mark.parametrize("target", SERVER_TARGETS)
def test_entrypoint_and_command(dockerfile, target):
    entrypoint = dockerfile.last(target, "ENTRYPOINT").exec_form
    cmd = dockerfile.last(target, "CMD").exec_form
    assert entrypoint == ["pixforge"], (
        "exec form: the server is PID 1's child of tini/compose init and gets SIGTERM"
    )
    assert cmd[0] in COMMANDS and cmd[0] == "serve"
    build_parser().parse_args(cmd)


@pytest.mark.parametrize("target", SERVER_TARGETS)
def test_image_environment_and_ports_match_the_server(dockerfile, target):
    env = dockerfile.env(target)
    assert env["PIXFORGE_MODELS"] == "/models"
    copied = [c.operands() for c in dockerfile.chain(target)[-2].all("COPY") if "from" not in c.flags()]
    assert ["models/", "/models/"] in copied, (
        "the bundled default repository goes where PIXFORGE_MODELS points"
    )
    known = {env_name(k) for k in config_keys()} | set(ENV_ALIASES)
    settings = {k: v for k, v in env.items() if k.startswith("PIXFORGE_")}
    assert set(settings) <= known
    cfg = build_config(read_env(settings))
    exposed = {int(p) for i in dockerfile.chain(target) for e in i.all("EXPOSE") for p in e.args.split()}
    ports = {cfg.port, cfg.http_port, cfg.metrics_port}
    assert exposed == ports == {ServiceConfig().port, ServiceConfig().http_port, ServiceConfig().metrics_port}
    # `docker run -p 9090:9090` reaches the metrics only if they listen beyond the container's loopback.
    assert ipaddress.ip_address(cfg.metrics_host or cfg.host).is_unspecified, cfg.metrics_host


@pytest.mark.parametrize("target", SERVER_TARGETS)
@pytest.mark.parametrize("port", [None, "6000"], ids=["default-port", "PIXFORGE_PORT"])
def test_healthcheck_asks_readiness_on_the_configured_grpc_port(dockerfile, target, port, tmp_path):
    """`docker run [-e PIXFORGE_PORT=6000] IMAGE`: the image's probe asks the port the server serves."""
    healthcheck = dockerfile.last(target, "HEALTHCHECK")
    assert healthcheck is not None, f"{target} has no HEALTHCHECK"
    env = dockerfile.env(target)
    if port is not None:
        env[env_name("port")] = port
    argv = healthcheck_argv(healthcheck.healthcheck_test, env, tmp_path)
    assert argv[:2] == ["pixforge", "health"], argv
    args = build_parser().parse_args(argv[1:])
    cfg = build_config(read_env(env))  # the server's own reading of the same environment
    host, _, probed = args.server.rpartition(":")
    assert host == "localhost"
    assert int(probed) == cfg.port == (int(port) if port else ServiceConfig().port)
    # Readiness: the API's service is SERVING once every model is loaded and warmed up ("" only says
    # the process is up).
    assert args.service == "pixforge.v1.ImageTranslation"
    assert args.timeout < parse_duration(healthcheck.flags()["timeout"]), "the probe must end first"


@pytest.mark.parametrize("target", SERVER_TARGETS)
def test_no_torch_in_the_serving_images(dockerfile, target):
    for name in dockerfile.needed_stages(target):
        for run in dockerfile.stage(name).all("RUN"):
            for word in _pip_install_words(run.args):
                assert not re.match(r"torch\b", word) and "[train" not in word, f"{name}: pip install {word}"


def test_onnxruntime_versions(dockerfile):
    version = Version(dockerfile.global_args["ORT_VERSION"])
    gpu_req = _pyproject_requirement("onnxruntime-gpu", "server")
    assert version in gpu_req.specifier, f"ORT_VERSION {version} is outside pyproject's {gpu_req}"
    gpu = _pip_install_words(dockerfile.stage("build-gpu").all("RUN")[0].args)
    cpu = _pip_install_words(dockerfile.stage("build-cpu").all("RUN")[0].args)
    assert "onnxruntime-gpu[cuda,cudnn]==${ORT_VERSION}" in gpu
    assert "$(echo /wheels/pixforge-*.whl)[server]" in gpu, "the GPU server installs the server extra"
    assert "wheel_requirements.py /wheels/pixforge-*.whl --extra server" in " ".join(
        dockerfile.stage("build-cpu").all("RUN")[0].args.split()
    ), "the CPU server installs the server extra's requirements"
    assert "onnxruntime==${ORT_VERSION}" in cpu and not any("onnxruntime-gpu" in w for w in cpu)
    assert "python /opt/pixforge-build/check_gpu_libs.py" in dockerfile.stage("build-gpu").all("RUN")[0].args


def test_cuda_requirement_matches_onnxruntime(dockerfile):
    """onnxruntime-gpu >= 1.27 is built for CUDA 13 + cuDNN 9, 1.19-1.26 for CUDA 12 + cuDNN 9."""
    version = Version(dockerfile.global_args["ORT_VERSION"])
    expected_major = 13 if version >= Version("1.27") else 12
    requirement = dockerfile.arg_default("CUDA_REQUIREMENT", "server-gpu")
    assert requirement == f"cuda>={expected_major}.0"
    assert dockerfile.env("server-gpu")["NVIDIA_REQUIRE_CUDA"] == "${CUDA_REQUIREMENT}"
    assert "compute" in dockerfile.env("server-gpu")["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    try:  # cross-check with the installed wheel when it is the pinned one
        import onnxruntime
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        return
    if Version(onnxruntime.__version__) == version and getattr(info, "cuda_version", ""):
        assert int(info.cuda_version.split(".")[0]) == expected_major


# --------------------------------------------------------------------------- the trainer image


def test_trainer_installs_cuda_torch_first(dockerfile_train):
    torch_version = dockerfile_train.arg_default("TORCH_VERSION", "build")
    index = dockerfile_train.arg_default("TORCH_INDEX_URL", "build")
    assert Version(torch_version) in _pyproject_requirement("torch", "train").specifier
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d{3}", index), index
    runs = [r.args for r in dockerfile_train.stage("build").all("RUN")]
    torch_run = next(i for i, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r)
    assert '--index-url "${TORCH_INDEX_URL}"' in runs[torch_run]
    extra_run = next(i for i, r in enumerate(runs) if "[train]" in r)
    assert torch_run < extra_run, "torch must be installed before pixforge[train] resolves a bare `torch`"
    cuda = int(index.rsplit("cu", 1)[1][:2])
    assert dockerfile_train.arg_default("CUDA_REQUIREMENT", "trainer") == f"cuda>={cuda}.0"


def test_trainer_image(dockerfile_train):
    trainer = dockerfile_train.stages[-1]
    assert trainer.name == "trainer"
    user = trainer.all("USER")
    assert user and user[-1].args not in ("root", "0")
    assert dockerfile_train.last("trainer", "ENTRYPOINT").exec_form == ["pixforge"]
    cmd = dockerfile_train.last("trainer", "CMD").exec_form
    assert cmd == ["--help"] or cmd[0] in COMMANDS, "the default command lists train, export and eval"
    env = dockerfile_train.env("trainer")
    assert env["PIXFORGE_MODELS"] == "/models"
    workdir = trainer.all("WORKDIR")[-1].args
    configs = [c.operands() for c in trainer.all("COPY") if "from" not in c.flags()]
    assert ["training/configs/", f"{workdir}/training/configs/"] in configs, (
        "`pixforge train training/configs/X.yaml` must work from the WORKDIR"
    )


def test_build_args_expand(dockerfile):
    """Every ${ARG} a RUN uses is declared in its stage (a typo would expand to empty)."""
    for stage in dockerfile.stages:
        declared = {i.args.split("=")[0] for i in stage.all("ARG")}
        env = set(dockerfile.env(stage.name))
        for run in stage.all("RUN"):
            left = re.findall(r"\$\{(\w+)\}", expand_args(run.args, {n: "x" for n in declared | env}))
            assert not left, f"{stage.name}:{run.line} uses undeclared {left}"
