# accel-cost-exporter container image.
#
#   docker build -t accel-cost-exporter .
#   docker run --rm --gpus all -p 11094:11094 accel-cost-exporter       # NVIDIA Container Toolkit
#
# No driver is baked in: NVML (libnvidia-ml.so) comes from the host through the NVIDIA
# container runtime, which reads NVIDIA_VISIBLE_DEVICES and NVIDIA_DRIVER_CAPABILITIES below.
# See docs/deploy.md.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- build: a self-contained virtual environment ------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY . .
# Extras: aws (boto3, for the AWS pricing API) and kubernetes (grpcio, for pod attribution).
RUN python -m venv /opt/accel-cost-exporter \
    && /opt/accel-cost-exporter/bin/pip install --no-cache-dir ".[aws,kubernetes]" \
    && /opt/accel-cost-exporter/bin/accel-cost-exporter --help > /dev/null

# --- run: the venv on the same slim base, no compilers, no pip cache --------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="accel-cost-exporter" \
      org.opencontainers.image.description="Prometheus exporter for accelerator cost, idle spend and waste"

COPY --from=builder /opt/accel-cost-exporter /opt/accel-cost-exporter

# 65532: an unprivileged numeric user (no /etc/passwd entry needed). The state directory holds
# the price cache; in Kubernetes an emptyDir is mounted over it (read-only root filesystem).
RUN mkdir -p /var/lib/accel-cost-exporter \
    && chown 65532:65532 /var/lib/accel-cost-exporter \
    && chmod 0700 /var/lib/accel-cost-exporter

ENV PATH=/opt/accel-cost-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STATE_DIRECTORY=/var/lib/accel-cost-exporter \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility

USER 65532:65532
EXPOSE 11094

# slim images have no curl: probe with Python. Assumes the default port and plain HTTP; with
# --web.config.file (TLS or basic auth) use the orchestrator's own probes instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:11094/-/healthy', timeout=4)"]

ENTRYPOINT ["accel-cost-exporter"]
