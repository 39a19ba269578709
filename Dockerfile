# pixforge inference server images (no torch in them; the trainer image is Dockerfile.train).
#
#   docker build -t pixforge:gpu .                       # target server-gpu (the default: last stage)
#   docker build -t pixforge:cpu --target server-cpu .   # CPU only, plain onnxruntime
#
# Base image choice: python slim + onnxruntime-gpu[cuda,cudnn] rather than nvidia/cuda:*-cudnn-runtime.
#   onnxruntime-gpu 1.31 is built for CUDA 13 + cuDNN 9, and its `cuda`/`cudnn` extras pin exactly
#   the CUDA pieces it links against (nvidia-cuda-runtime/-nvrtc ~=13.0, nvidia-cufft ~=12.0,
#   nvidia-curand ~=10.0, nvidia-cudnn-cu13 ~=9.0; cuBLAS comes with cuDNN). pip resolves them from
#   the same requirement as onnxruntime itself, so bumping ORT_VERSION can never leave a CUDA/cuDNN
#   base image behind, and the image carries only those libraries instead of the whole CUDA
#   runtime (cuSPARSE, NPP, nvJPEG, ...). The CPU image shares the same base and stages.
#   The host needs only the NVIDIA driver (CUDA 13: driver >= 580) and the NVIDIA Container Toolkit.
#   The build stops if onnxruntime's CUDA provider cannot resolve a library (deploy/check_gpu_libs.py).
#
# Build args: PYTHON_IMAGE (a Debian-based image with `python` and venv), ORT_VERSION (must satisfy
# pyproject.toml's onnxruntime-gpu range), CUDA_REQUIREMENT (driver check done by the NVIDIA runtime).
# Only classic-builder features are used, so `docker build` works with and without BuildKit.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG ORT_VERSION=1.31.1

# ---------------------------------------------------------------- wheel: build pixforge once
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
# The gRPC stubs are generated while the wheel builds (setup.py -> tools/codegen.py).
COPY tools/codegen.py tools/codegen.py
COPY protos/ protos/
COPY third_party/ third_party/
COPY pixforge/ pixforge/
COPY service/ service/
COPY clients/ clients/
COPY training/ training/
COPY bench/ bench/
RUN /opt/build/bin/pip wheel --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------- venv: empty virtualenv at /opt/venv
# Both runtime images copy /opt/venv from a stage built FROM the same base, so paths match.
FROM ${PYTHON_IMAGE} AS venv
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY --from=wheel /wheels/ /wheels/
COPY deploy/wheel_requirements.py deploy/check_gpu_libs.py /opt/pixforge-build/

# ---------------------------------------------------------------- build-cpu: plain onnxruntime
# pip cannot leave one dependency out, and pixforge[server] depends on onnxruntime-gpu on x86-64
# Linux: install the wheel without dependencies and its other requirements (base + the server
# extra, read from the wheel) beside plain onnxruntime.
FROM venv AS build-cpu
ARG ORT_VERSION
RUN python /opt/pixforge-build/wheel_requirements.py /wheels/pixforge-*.whl --extra server \
        --drop onnxruntime --drop onnxruntime-gpu > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt "onnxruntime==${ORT_VERSION}" \
 && pip install --no-deps /wheels/pixforge-*.whl \
 && python -c "import pixforge.service.server, pixforge.clients.health" \
 && ! pip show --quiet torch 2>/dev/null

# ---------------------------------------------------------------- server-base: what both servers share
FROM ${PYTHON_IMAGE} AS server-base
RUN groupadd --gid 10001 pixforge \
 && useradd --uid 10001 --gid pixforge --home-dir /home/pixforge --create-home \
        --shell /usr/sbin/nologin pixforge
# The bundled default model repository; compose mounts the operator's repository over it.
COPY models/ /models/
# The metrics endpoint binds loopback unless told otherwise; inside a container it must listen on
# every interface of the container's own network for a published port (or Prometheus) to reach it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIXFORGE_MODELS=/models \
    PIXFORGE_METRICS_HOST=0.0.0.0
WORKDIR /home/pixforge
# gRPC (service/config.py `port`), KServe v2 HTTP/REST (`http_port`) and Prometheus metrics
# (`metrics_port`).
EXPOSE 50051 8000 9090
# SIGTERM: health NOT_SERVING, in-flight requests get grace_seconds; SIGHUP: re-scan the models.
STOPSIGNAL SIGTERM
ENTRYPOINT ["pixforge"]
CMD ["serve"]

# ---------------------------------------------------------------- server-cpu
FROM server-base AS server-cpu
COPY --from=build-cpu /opt/venv/ /opt/venv/
# Only the CPU provider exists here: say so instead of probing for CUDA.
ENV PIXFORGE_ENGINE_PROVIDERS=cpu
USER pixforge
# Readiness: grpc.health.v1 on the API's service (SERVING once every model is loaded and warmed up),
# on the configured gRPC port. Shell form: each probe reads PIXFORGE_PORT (the server's `port`
# setting, service/config.py), 50051 (its default) when unset. Move the port with PIXFORGE_PORT: a
# `serve --port` flag or a config file's `port:` is not seen by the probe.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD exec pixforge health --server "localhost:${PIXFORGE_PORT:-50051}" --service pixforge.v1.ImageTranslation --timeout 4

# ---------------------------------------------------------------- build-gpu: onnxruntime-gpu + pip CUDA libs
FROM venv AS build-gpu
ARG ORT_VERSION
# The CUDA/cuDNN libraries live in site-packages/nvidia/*/lib; onnxruntime looks only beside
# itself, so register those folders with the dynamic loader (no LD_LIBRARY_PATH to lose).
RUN pip install "$(echo /wheels/pixforge-*.whl)[server]" "onnxruntime-gpu[cuda,cudnn]==${ORT_VERSION}" \
 && find /opt/venv -type d -path "*/site-packages/nvidia/*/lib" | sort > /etc/ld.so.conf.d/pixforge-nvidia.conf \
 && test -s /etc/ld.so.conf.d/pixforge-nvidia.conf \
 && ldconfig \
 && python /opt/pixforge-build/check_gpu_libs.py \
 && python -c "import pixforge.service.server, pixforge.clients.health" \
 && ! pip show --quiet torch 2>/dev/null

# ---------------------------------------------------------------- server-gpu (default target)
FROM server-base AS server-gpu
ARG CUDA_REQUIREMENT="cuda>=13.0"
COPY --from=build-gpu /opt/venv/ /opt/venv/
COPY --from=build-gpu /etc/ld.so.conf.d/pixforge-nvidia.conf /etc/ld.so.conf.d/pixforge-nvidia.conf
RUN ldconfig
# Read by the NVIDIA Container Toolkit: mount the driver's compute libraries (and nvidia-smi), and
# refuse to start on a driver too old for the CUDA 13 libraries instead of failing at inference.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA=${CUDA_REQUIREMENT}
USER pixforge
# The same readiness probe as server-cpu's (on PIXFORGE_PORT, 50051 when unset).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD exec pixforge health --server "localhost:${PIXFORGE_PORT:-50051}" --service pixforge.v1.ImageTranslation --timeout 4
