"""deploy/k8s: every kustomization renders, the objects validate offline, and they agree with the server.

* Rendering: `kubectl kustomize` on every kustomization under deploy/k8s, and on every overlay with
  each optional component added (the way docs/deploy.md tells operators to add them). Without
  kubectl the rendering tests skip (CI machines have it).
* Schemas: every rendered built-in object is validated strictly (unknown fields are errors) against
  the newest Kubernetes version kubernetes-validate ships, offline (the schemas are in the wheel).
  Custom resources (ServingRuntime, InferenceService, ServiceMonitor) have no schema there: their
  required fields are checked here, and the pod parts they embed are validated as core objects.
* The server: the container's configuration resolves through service/config.py exactly as
  `pixforge serve` would resolve it (image ENV < ConfigMap < env), every PIXFORGE_* variable is a
  real key, container ports, probes, Service ports and the ServiceMonitor follow it, the server's
  writes land on writable volumes, and a real server started with that configuration answers the
  very gRPC health services and HTTP paths the probes name.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from deploy_helpers import REPO, image_tag, interpolate, parse_dockerfile

from pixforge.cli import build_parser

K8S = REPO / "deploy" / "k8s"
DOCS = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not installed, so the kustomizations cannot be rendered (CI machines have it)",
)

# Custom resources: no schema in kubernetes-validate; checked field by field below.
CRD_KINDS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"),
    ("serving.kserve.io/v1beta1", "InferenceService"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
GPU = "nvidia.com/gpu"


def _kustomizations(kind: str) -> list[str]:
    """Folders (relative to deploy/k8s) whose kustomization.yaml is a ``kind`` (Kustomization, Component)."""
    found = []
    for path in sorted(K8S.rglob("kustomization.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if doc.get("kind", "Kustomization") == kind:
            found.append(path.parent.relative_to(K8S).as_posix())
    return found


KUSTOMIZATIONS = _kustomizations("Kustomization")
COMPONENTS = _kustomizations("Component")
OVERLAYS = [k for k in KUSTOMIZATIONS if k.startswith("overlays/")]
# What gets rendered: every kustomization, and every overlay with each component and with all of them.
VARIANTS = KUSTOMIZATIONS + [
    f"{overlay}+{'+'.join(components)}"
    for overlay in OVERLAYS
    for components in [[c] for c in COMPONENTS] + ([COMPONENTS] if len(COMPONENTS) > 1 else [])
]
SERVER_VARIANTS = [v for v in VARIANTS if v.startswith("overlays/")]


# --------------------------------------------------------------------------- rendering


def _kubectl_kustomize(folder: Path) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {folder} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _overlay_with_components(overlay: str, components: list[str], where: Path) -> Path:
    """A copy of an overlay with ``components:`` added, in ``where`` (paths outside it re-pointed)."""
    source = K8S / overlay
    shutil.copytree(source, where)
    doc = yaml.safe_load((where / "kustomization.yaml").read_text(encoding="utf-8"))

    def repoint(entry: str) -> str:
        target = (source / entry).resolve()
        if target == source or source in target.parents:
            return entry  # copied along
        # kustomize wants relative paths for folders outside the kustomization.
        return os.path.relpath(target, where)

    doc["resources"] = [repoint(e) for e in doc.get("resources", [])]
    doc["components"] = [repoint(e) for e in doc.get("components", [])] + [
        os.path.relpath(K8S / c, where) for c in components
    ]
    (where / "kustomization.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return where


@pytest.fixture(scope="session")
def render(tmp_path_factory):
    """render(variant) -> the rendered objects (cached per session)."""

    @functools.cache
    def _render(variant: str) -> tuple[dict, ...]:
        if KUBECTL is None:
            pytest.skip("kubectl is not installed, so the kustomizations cannot be rendered")
        overlay, *components = variant.split("+")
        folder = K8S / overlay
        if components:
            where = tmp_path_factory.mktemp("kustomize") / overlay.replace("/", "-")
            folder = _overlay_with_components(overlay, components, where)
        return tuple(_kubectl_kustomize(folder))

    return _render


def _objects(objs, kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def _one(objs, kind: str, name: str | None = None) -> dict:
    found = [o for o in _objects(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container(deployment: dict, name: str = "server") -> dict:
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return container


# --------------------------------------------------------------------------- inventory


def test_the_kustomizations_the_docs_promise_exist():
    assert {"base", "overlays/gpu", "overlays/cpu", "kserve"} <= set(KUSTOMIZATIONS)
    assert {"components/service-monitor", "components/models-from-object-storage"} <= set(COMPONENTS)
    for folder in KUSTOMIZATIONS + COMPONENTS:
        assert f"deploy/k8s/{folder}" in DOCS, f"docs/deploy.md does not mention deploy/k8s/{folder}"


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_kustomization_renders(render, variant):
    objs = render(variant)
    assert objs
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), f"duplicate objects: {keys}"
    if variant.startswith("overlays/"):
        assert {o["metadata"].get("namespace") for o in objs} == {"pixforge"}


# --------------------------------------------------------------------------- schemas


def _k8s_version() -> str:
    kv_utils = pytest.importorskip("kubernetes_validate.utils")
    return kv_utils.all_versions()[-1]  # the newest Kubernetes version whose schemas ship


def _validate(obj: dict) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    try:
        kv.validate(obj, _k8s_version(), strict=True)
    except kv.ValidationError as exc:
        raise AssertionError(f"{obj['kind']} {obj['metadata']['name']}: {exc}") from None


def _validate_pod_parts(spec: dict, where: str) -> None:
    """Validate containers/volumes embedded in a custom resource as a core Pod would be."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": where},
        "spec": {k: spec[k] for k in ("containers", "initContainers", "volumes") if k in spec},
    }
    _validate(pod)


def test_validation_is_offline_and_strict():
    """The schemas ship in the package and strict mode rejects what the API server would."""
    kv = pytest.importorskip("kubernetes_validate")
    deployment = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text(encoding="utf-8"))
    _validate(deployment)
    for mutate in (
        lambda d: d["spec"].update(replica=2),  # misspelt field
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"].update(
            port="grpc"  # gRPC probes take a number, not a port name
        ),
    ):
        broken = copy.deepcopy(deployment)
        mutate(broken)
        with pytest.raises(kv.ValidationError):
            kv.validate(broken, _k8s_version(), strict=True)


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_objects_validate_against_the_kubernetes_schemas(render, variant):
    kv = pytest.importorskip("kubernetes_validate")
    for obj in render(variant):
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue  # test_custom_resources_have_their_required_fields
        try:
            _validate(obj)
        except kv.SchemaNotFoundError:
            pytest.fail(f"{obj['apiVersion']} {obj['kind']}: no schema and no CRD check in this test")


def _check_serving_runtime(obj: dict) -> None:
    spec = obj["spec"]
    containers = spec["containers"]
    assert containers and all(c.get("name") and c.get("image") for c in containers)
    assert any(c["name"] == "kserve-container" for c in containers), "KServe looks for kserve-container"
    formats = spec["supportedModelFormats"]
    assert all(f.get("name") for f in formats)
    assert any(f["name"] == "onnx" for f in formats)
    protocols = spec["protocolVersions"]
    assert set(protocols) <= {"v1", "v2", "grpc-v1", "grpc-v2"} and {"v2", "grpc-v2"} <= set(protocols)
    assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "pixforge"
    _validate_pod_parts(spec, obj["metadata"]["name"])


MODEL_FIELDS = {"modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage"}


def _check_inference_service(obj: dict) -> None:
    model = obj["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"]
    uri = model["storageUri"]
    assert re.match(r"^(s3|gs|pvc|https?|hdfs|webhdfs|oci|hf)://\S+$", uri), uri
    assert model.get("runtime"), "name the runtime: pixforge is not auto-selected for ONNX"
    # The rest of `model` is a core Container (KServe merges it into kserve-container).
    container = {k: v for k, v in model.items() if k not in MODEL_FIELDS}
    _validate_pod_parts({"containers": [{"name": "kserve-container", **container}]}, obj["metadata"]["name"])


def _check_service_monitor(obj: dict) -> None:
    spec = obj["spec"]
    assert spec["selector"]["matchLabels"]
    assert spec["endpoints"] and all(e.get("port") for e in spec["endpoints"])


CRD_CHECKS = {
    "ServingRuntime": _check_serving_runtime,
    "InferenceService": _check_inference_service,
    "ServiceMonitor": _check_service_monitor,
}


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_custom_resources_have_their_required_fields(render, variant):
    for obj in render(variant):
        if (obj["apiVersion"], obj["kind"]) not in CRD_KINDS:
            continue
        assert obj["metadata"]["name"]
        CRD_CHECKS[obj["kind"]](obj)


@needs_kubectl
def test_every_custom_resource_kind_is_rendered_by_some_variant(render):
    # Most variants render no custom resource, so the per-variant check above is empty for them:
    # this keeps it from passing unseen if a kustomization stopped rendering one.
    rendered = {(o["apiVersion"], o["kind"]) for variant in VARIANTS for o in render(variant)}
    assert CRD_KINDS <= rendered, f"never rendered: {sorted(CRD_KINDS - rendered)}"


# --------------------------------------------------------------------------- the server's view


def _image_target(image: str) -> str:
    """Dockerfile target of an image reference (tags end in gpu / cpu, as compose names them)."""
    tag = image.rsplit(":", 1)[-1]
    if tag.endswith("gpu"):
        return "server-gpu"
    if tag.endswith("cpu"):
        return "server-cpu"
    raise AssertionError(f"cannot tell the image target of {image!r} (tag must end in gpu or cpu)")


def _container_env(container: dict, objs) -> tuple[dict[str, str], dict[str, str]]:
    """(environment inside the container, the part the manifests set), as the kubelet builds it."""
    dockerfile = parse_dockerfile(REPO / "Dockerfile")
    env = dockerfile.env(_image_target(container["image"]))
    manifest: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            manifest.update(_one(objs, "ConfigMap", name).get("data", {}))
        else:
            assert source["secretRef"].get("optional"), "a required Secret cannot be checked here"
    for var in container.get("env", []):
        assert "value" in var, f"{var['name']}: only literal values are checked"
        manifest[var["name"]] = var["value"]
    env.update(manifest)
    return env, manifest


def _server_config(container: dict, objs):
    from pixforge.service.config import config_from_args

    assert "command" not in container, "keep the image's ENTRYPOINT (pixforge)"
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve"
    env, manifest = _container_env(container, objs)
    return config_from_args(args, env=env), env, manifest  # raises ConfigError naming a bad key


def _served_health_services(cfg) -> set[str]:
    from pixforge.service.kserve import SERVICE_NAME as KSERVE_SERVICE_NAME
    from pixforge.service.server import SERVICE_NAME

    return {"", SERVICE_NAME} | ({KSERVE_SERVICE_NAME} if cfg.kserve else set())


def _known_env_names() -> set[str]:
    from pixforge.service.config import ENV_ALIASES, config_keys, env_name

    return {env_name(k) for k in config_keys()} | set(ENV_ALIASES)


def _check_server_variables(manifest: dict[str, str]) -> None:
    """Every PIXFORGE_* variable the manifests set is a server key (the server ignores unknown ones)."""
    unknown = {k for k in manifest if k.startswith("PIXFORGE_")} - _known_env_names()
    assert not unknown, f"not server config keys (silently ignored): {sorted(unknown)}"
    # A Service named pixforge, pixforge-http or pixforge-metrics in the namespace makes the kubelet
    # inject PIXFORGE_PORT=tcp://... (service links): set every *_PORT key explicitly.
    port_vars = {n for n in _known_env_names() if n.endswith("_PORT")}
    assert port_vars <= set(manifest), f"set explicitly: {sorted(port_vars - set(manifest))}"


def _writable_paths(pod_spec: dict, container: dict) -> list[str]:
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    return [
        m["mountPath"]
        for m in container.get("volumeMounts", [])
        if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")
    ]


def _under(path: str, folders: list[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


def _image_uid() -> int:
    base = parse_dockerfile(REPO / "Dockerfile").stage("server-base")
    (uid,) = {int(m) for run in base.all("RUN") for m in re.findall(r"useradd .*?--uid (\d+)", run.args)}
    return uid


def _check_pod_security(pod_spec: dict, containers: list[dict]) -> None:
    pod_sc = pod_spec.get("securityContext", {})
    for c in containers:
        sc = {**pod_sc, **c.get("securityContext", {})}
        assert sc.get("runAsNonRoot") is True, c["name"]
        assert sc.get("runAsUser") == _image_uid(), f"{c['name']}: run as the image's user"
        assert sc.get("readOnlyRootFilesystem") is True, c["name"]
        assert sc.get("allowPrivilegeEscalation") is False, c["name"]
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), c["name"]


def _check_writes(cfg, env: dict[str, str], writable: list[str]) -> None:
    """Where the server writes on a read-only root filesystem: each lands on a writable volume."""
    from pixforge.service.engine import trt_cache_dir

    assert _under(str(trt_cache_dir(cfg.engine, cfg.repository)), writable), "TensorRT engine cache"
    assert _under(env.get("TMPDIR", "/tmp"), writable), "temporary files"
    if "CUDA_CACHE_PATH" in env:
        assert _under(env["CUDA_CACHE_PATH"], writable), "CUDA JIT cache"


@needs_kubectl
@pytest.mark.parametrize("variant", SERVER_VARIANTS)
def test_deployment_follows_the_server_config(render, variant):
    objs = render(variant)
    deployment = _one(objs, "Deployment", "pixforge")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    cfg, env, manifest = _server_config(container, objs)
    _check_server_variables(manifest)

    # Listening: every interface of the pod, on the ports the pod declares.
    assert cfg.host == "0.0.0.0" and (cfg.metrics_host or cfg.host) == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": cfg.port, "http": cfg.http_port, "metrics": cfg.metrics_port}
    assert cfg.http_port > 0 and cfg.metrics_port > 0 and cfg.port > 0, "fixed ports, not OS-chosen"
    assert pod.get("enableServiceLinks") is False

    # Probes: native gRPC health checks on the gRPC port, on services the server registers.
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]
        assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, kind
        assert probe["grpc"]["port"] == cfg.port, kind
        assert probe["grpc"].get("service", "") in _served_health_services(cfg), kind
        assert probe["timeoutSeconds"] < probe["periodSeconds"] or kind == "startupProbe"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model load + warm-up"
    assert container["readinessProbe"]["grpc"]["service"], "readiness: the API's own service"

    # Shutdown: preStop sleep + the server's grace period fit in the pod's termination grace.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + cfg.grace_seconds

    # Filesystem: read-only root and models; the server's writes land on emptyDirs.
    _check_pod_security(pod, pod["containers"] + pod.get("initContainers", []))
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[cfg.models].get("readOnly") is True, "the server only reads the model repository"
    _check_writes(cfg, env, _writable_paths(pod, container))

    # Model repository: the shared PVC, or an emptyDir an init container fills.
    volumes = {v["name"]: v for v in pod["volumes"]}
    models_volume = volumes[mounts[cfg.models]["name"]]
    if "persistentVolumeClaim" in models_volume:
        assert models_volume["persistentVolumeClaim"]["readOnly"] is True
        _one(objs, "PersistentVolumeClaim", models_volume["persistentVolumeClaim"]["claimName"])
    else:
        assert "emptyDir" in models_volume and not _objects(objs, "PersistentVolumeClaim")
        fillers = [
            c
            for c in pod.get("initContainers", [])
            for m in c.get("volumeMounts", [])
            if m["name"] == models_volume["name"] and not m.get("readOnly")
        ]
        assert fillers, "an emptyDir model repository needs an init container that fills it"

    # GPU: the GPU overlay asks for one GPU per pod; the CPU overlay for none, and says so.
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    if _image_target(container["image"]) == "server-gpu":
        assert str(limits[GPU]) == "1" and "cuda" in cfg.engine.providers
        assert any(t["key"] == GPU for t in pod.get("tolerations", []))
    else:
        assert GPU not in limits and GPU not in requests and cfg.engine.providers == ("cpu",)
    assert limits["cpu"] == requests["cpu"], "the server sizes its threads from the CPU limit"


def _pod_labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# Memory the models and the runtime take beside the requests (onnxruntime sessions and arenas of the
# shipped models, the interpreter; with CUDA also the CUDA/cuDNN host-side state): an allowance.
RUNTIME_ALLOWANCE = {"server-cpu": 1.5 * (1 << 30), "server-gpu": 2.5 * (1 << 30)}
QUANTITY_UNITS = {
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
}


def _bytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity)).groups()
    return float(number) * QUANTITY_UNITS.get(unit, 1)


def _server_pods(objs) -> list[tuple[dict, dict]]:
    """(container, its effective resources) of every server pod a variant renders."""
    pods = [(c, c["resources"]) for d in _objects(objs, "Deployment") for c in [_container(d)]]
    for runtime in _objects(objs, "ServingRuntime"):
        (container,) = [c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container"]
        # An InferenceService's resources replace the runtime's (KServe merges model into container).
        services = _objects(objs, "InferenceService") or [None]
        for service in services:
            resources = service["spec"]["predictor"]["model"]["resources"] if service else None
            pods.append((container, resources or container["resources"]))
    return pods


@needs_kubectl
@pytest.mark.parametrize("variant", SERVER_VARIANTS + ["kserve"])
def test_memory_limit_holds_the_worst_case_the_limits_allow(render, variant):
    # A pod killed for memory under load drops every request it holds: the limit must cover what
    # the server's own limits let requests hold (docs/serving.md "Resource use").
    from pixforge.service.config import request_memory_bound

    objs = render(variant)
    pods = _server_pods(objs)
    assert pods
    for container, resources in pods:
        cfg, _, _ = _server_config(container, objs)
        cpus = int(float(resources["limits"]["cpu"]))
        need = request_memory_bound(cfg, cpus) + RUNTIME_ALLOWANCE[_image_target(container["image"])]
        limit = _bytes(resources["limits"]["memory"])
        assert need <= limit, (
            f"{container['name']}: requests may hold {need / (1 << 30):.1f} GiB with the models, "
            f"over the {resources['limits']['memory']} limit"
        )
        assert _bytes(resources["requests"]["memory"]) == limit, "requests = limits: no overcommit"


@needs_kubectl
@pytest.mark.parametrize("variant", SERVER_VARIANTS)
def test_services_pdb_and_hpa_reach_the_pods(render, variant):
    objs = render(variant)
    deployment = _one(objs, "Deployment", "pixforge")
    labels = _pod_labels(deployment)
    assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)
    container = _container(deployment)
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    services = {s["metadata"]["name"]: s for s in _objects(objs, "Service")}
    for svc in services.values():
        assert _selects(svc["spec"]["selector"], labels), svc["metadata"]["name"]
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in container_ports or target in container_ports.values(), (
                f"{svc['metadata']['name']}: targetPort {target} is not a container port"
            )
    assert {p["name"] for p in services["pixforge"]["spec"]["ports"]} == {"grpc", "http", "metrics"}
    headless = services["pixforge-headless"]["spec"]
    assert headless["clusterIP"] == "None" and not headless.get("publishNotReadyAddresses")
    assert "grpc" in {p["name"] for p in headless["ports"]}

    pdb = _one(objs, "PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    hpa = _one(objs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count (kubectl apply resets it)"


def _compose_image(service: str) -> str:
    compose = interpolate(yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8")), {})
    return compose["services"][service]["image"]


def test_manifests_use_the_images_compose_builds():
    """base = server-gpu (pixforge:gpu), overlays/cpu = server-cpu (pixforge:cpu), registry via images:."""
    base = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text(encoding="utf-8"))
    assert _container(base)["image"] == _compose_image("server")
    cpu_patch = yaml.safe_load((K8S / "overlays" / "cpu" / "cpu-resources.yaml").read_text(encoding="utf-8"))
    assert _container(cpu_patch)["image"] == _compose_image("server-cpu")
    runtime = yaml.safe_load((K8S / "kserve" / "servingruntime.yaml").read_text(encoding="utf-8"))
    assert runtime["spec"]["containers"][0]["image"] == _compose_image("server")
    for folder in ("overlays/gpu", "overlays/cpu", "kserve"):
        doc = yaml.safe_load((K8S / folder / "kustomization.yaml").read_text(encoding="utf-8"))
        (image,) = doc["images"]
        assert image["name"] == "pixforge" and image["newName"] and image["newTag"], folder


def _images(node):
    """Every ``image:`` string in a manifest (containers, init containers, custom resources)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from _images(value)
    elif isinstance(node, list):
        for value in node:
            yield from _images(value)


def test_no_manifest_names_a_latest_image():
    """As written: every image reference and every kustomize ``images:`` override is pinned."""
    for path in sorted(K8S.rglob("*.yaml")):
        where = path.relative_to(REPO)
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            for image in _images(doc):
                assert image_tag(image) not in ("", "latest"), f"{where}: image {image!r} is not pinned"
            if isinstance(doc, dict) and doc.get("kind") in ("Kustomization", "Component"):
                for entry in doc.get("images", []):
                    assert entry.get("newTag", "x") != "latest", f"{where}: images: {entry}"


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_images_are_pinned(render, variant):
    """What `kubectl apply -k` sends: no image the kubelet would pull as :latest."""
    for obj in render(variant):
        for image in _images(obj):
            tag = image_tag(image)
            assert tag and tag != "latest", f"{variant}: {obj['kind']} {obj['metadata']['name']}: {image!r}"


# --------------------------------------------------------------------------- monitoring, autoscaling


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_scrapes_each_pod_once_on_the_metrics_port(render, overlay):
    from pixforge.service.http_server import METRICS_PATH

    objs = render(f"{overlay}+components/service-monitor")
    (monitor,) = _objects(objs, "ServiceMonitor")
    deployment = _one(objs, "Deployment", "pixforge")
    cfg, _, _ = _server_config(_container(deployment), objs)
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint.get("path", "/metrics") == METRICS_PATH
    assert endpoint.get("scheme", "http") == ("https" if cfg.tls.enabled else "http")
    selected = [
        s
        for s in _objects(objs, "Service")
        if _selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
        and endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
    ]
    assert len(selected) == 1, "exactly one Service may offer the scraped port, or pods are scraped twice"
    (port,) = [p for p in selected[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
    container_ports = {p["name"]: p["containerPort"] for p in _container(deployment)["ports"]}
    assert container_ports.get(port["targetPort"], port["targetPort"]) == cfg.metrics_port


def _gauges() -> set[str]:
    from pixforge.service.metrics import Metrics

    return {f.name for f in Metrics().registry.collect() if f.type == "gauge"}


def test_hpa_scales_on_a_server_gauge_the_adapter_serves():
    hpa = yaml.safe_load((K8S / "base" / "hpa.yaml").read_text(encoding="utf-8"))
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert name == "pixforge_admission_queued_seconds" and name in _gauges()
    assert metric["pods"]["target"]["type"] == "AverageValue"

    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text(encoding="utf-8"))
    rules = [r for r in values["rules"]["custom"] if r["name"]["as"] == name]
    assert len(rules) == 1, f"no Prometheus adapter rule serves {name}"
    (rule,) = rules
    assert re.match(rf"^{name}\{{", rule["seriesQuery"])
    assert re.fullmatch(rule["name"]["matches"], name)
    overrides = rule["resources"]["overrides"]
    assert overrides["pod"] == {"resource": "pod"} and overrides["namespace"] == {"resource": "namespace"}
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"]
    # docs/deploy.md shows the same rule.
    for text in (rule["seriesQuery"], rule["metricsQuery"]):
        assert text in DOCS, f"docs/deploy.md does not show the adapter rule line {text!r}"


# --------------------------------------------------------------------------- KServe


@needs_kubectl
def test_kserve_runtime_serves_what_kserve_downloads(render):
    objs = render("kserve")
    runtime = _one(objs, "ServingRuntime")
    isvc = _one(objs, "InferenceService")
    (container,) = [c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container"]
    cfg, env, manifest = _server_config(container, objs)
    _check_server_variables(manifest)
    # KServe's storage initializer fills /mnt/models; KServe routes HTTP to 8080 (gRPC: 8081, h2c).
    assert cfg.models == "/mnt/models" and cfg.http_port == 8080 and cfg.port == 8081
    assert cfg.host == "0.0.0.0" and (cfg.metrics_host or cfg.host) == "0.0.0.0"
    annotations = runtime["spec"]["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == cfg.metrics_port
    for kind in ("readinessProbe", "livenessProbe"):
        assert container[kind]["httpGet"]["port"] == cfg.http_port, kind
    _check_pod_security({}, [container])
    _check_writes(cfg, env, _writable_paths(runtime["spec"], container))
    assert "# To expose gRPC (port 8081)" in (K8S / "kserve" / "inferenceservice.yaml").read_text()

    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    # One shipped model; its name is the folder clients address, and the storageUri's last segment.
    name = isvc["metadata"]["name"]
    assert (REPO / "models" / name / "1" / "model.onnx").is_file()
    assert model["storageUri"].rstrip("/").rsplit("/", 1)[-1] == name


# --------------------------------------------------------------------------- a real server


def _grpc_health(address: str, service: str) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _http_get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
        return reply.status, reply.read().decode()


def _pod_under_test(render, variant: str) -> tuple[dict, tuple[dict, ...], list[str]]:
    """(server container, objects, paths other objects expect on the metrics port) of a variant."""
    if variant == "kserve":
        objs = render("kserve")
        runtime = _one(objs, "ServingRuntime")
        (container,) = [c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container"]
        return container, objs, [runtime["spec"]["annotations"]["prometheus.kserve.io/path"]]
    objs = render(f"{variant}+components/service-monitor")
    container = _container(_one(objs, "Deployment", "pixforge"))
    deployment_annotations = _one(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    paths = [e.get("path", "/metrics") for e in _one(objs, "ServiceMonitor")["spec"]["endpoints"]]
    return container, objs, paths + [deployment_annotations["prometheus.io/path"]]


@needs_kubectl
@pytest.mark.parametrize("variant", OVERLAYS + ["kserve"])
def test_a_server_started_like_the_pod_answers_its_probes(render, variant, tiny_models):
    """Start the real server with the pod's configuration (ports moved to free ones, CPU, a tiny
    model): every gRPC health service and HTTP path the probes and scrapers name answers."""
    from pixforge.service.config import config_from_args
    from pixforge.service.server import serve

    container, objs, metrics_paths = _pod_under_test(render, variant)
    env, _ = _container_env(container, objs)
    cfg_pod, _, _ = _server_config(container, objs)
    env.update(
        PIXFORGE_MODELS=str(tiny_models),
        PIXFORGE_HOST="127.0.0.1",
        PIXFORGE_METRICS_HOST="127.0.0.1",
        PIXFORGE_PORT="0",
        PIXFORGE_HTTP_PORT="-1",
        PIXFORGE_METRICS_PORT="-1",
        PIXFORGE_ENGINE_PROVIDERS="cpu",
        PIXFORGE_ENGINE_INTRA_OP_THREADS="1",
        PIXFORGE_MAX_WORKERS="4",
    )
    cfg = config_from_args(build_parser().parse_args(container["args"]), env=env)
    handle = serve(cfg, wait_for_models=True)
    try:
        moved = {
            cfg_pod.port: handle.port,
            cfg_pod.http_port: handle.http_port,
            cfg_pod.metrics_port: handle.metrics_port,
        }
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(kind)
            if probe is None:
                continue
            if "grpc" in probe:
                port = moved[probe["grpc"]["port"]]
                assert port == handle.port, f"{kind}: gRPC health is served on the gRPC port"
                status = _grpc_health(f"127.0.0.1:{port}", probe["grpc"].get("service", ""))
                assert status == "SERVING", f"{kind}: {probe['grpc']}"
            else:
                get = probe["httpGet"]
                status, _ = _http_get(moved[get["port"]], get["path"])
                assert status == 200, f"{kind}: GET {get['path']}"
        for path in metrics_paths:
            status, body = _http_get(handle.metrics_port, path)
            assert status == 200 and "pixforge_admission_queued_seconds" in body, path
    finally:
        handle.stop(grace=0)


# --------------------------------------------------------------------------- docs


def test_docs_explain_the_move_to_kubernetes():
    for phrase in (
        "kubectl apply -k deploy/k8s/overlays/gpu",
        "kubectl kustomize",
        "pixforge-headless",
        "round_robin",
        "ServiceMonitor",
        "storageUri",
        "replicas per GPU",
        "PIXFORGE_METRICS_HOST",
    ):
        assert phrase in DOCS, f"docs/deploy.md does not mention {phrase!r}"
