# dim: one image for every role (gateway, worker, orchestrator, projector, batcher, up, and the
# operator's commands): `docker run dim:latest <command>`, as `dim <command>` (docs/deploy.md).
#
#   docker build -t dim:latest .                            # base: python:3.11-slim-bookworm
#   docker build --build-arg BASE=dim-base:bookworm .       # a base made without a registry
#   docker build --build-arg EXTRAS=vllm .                  # with vLLM (CUDA) for GPU workers
#
# `just image` does this (and picks the local base when it exists). The build reaches PyPI for the
# locked dependencies; nothing else.

ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS builder
ARG UV_VERSION=0.13.8
ARG EXTRAS=""
# A CA (PEM text) the build must trust besides the usual ones, for a site whose egress proxy
# re-signs TLS; used by this stage only, so it is not in the image (image.sh: DIM_BUILD_CA).
ARG BUILD_CA_PEM=""
ENV UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/dim/venv \
    SSL_CERT_FILE=/opt/build-ca.pem \
    PIP_CERT=/opt/build-ca.pem
RUN cat /etc/ssl/certs/ca-certificates.crt > /opt/build-ca.pem \
    && printf '%s\n' "${BUILD_CA_PEM}" >> /opt/build-ca.pem \
    && python3 -m venv /opt/uv && /opt/uv/bin/pip install --quiet --disable-pip-version-check "uv==${UV_VERSION}"
WORKDIR /src
# The locked dependencies first: their layer is reused while only dim's own code changes.
COPY pyproject.toml uv.lock README.md ./
RUN /opt/uv/bin/uv sync --locked --no-dev --no-install-project --python python3 \
        ${EXTRAS:+--extra ${EXTRAS}}
COPY events/ events/
COPY projections/ projections/
COPY services/ services/
COPY gateway/ gateway/
# dim itself, as a wheel into the environment (not editable: the runtime stage has no /src)
RUN /opt/uv/bin/uv sync --locked --no-dev --no-editable --python python3 \
        ${EXTRAS:+--extra ${EXTRAS}} \
    && /opt/dim/venv/bin/dim --help >/dev/null

FROM ${BASE}
ARG DIM_UID=10001
RUN useradd --system --uid "${DIM_UID}" --user-group --home-dir /var/lib/dim --create-home \
        --shell /usr/sbin/nologin dim
COPY --from=builder /opt/dim/venv /opt/dim/venv
COPY infra/docker/healthcheck.py /opt/dim/healthcheck.py
# Listen on every address inside the container (publish ports on the host as you choose). Each
# process other than the gateway serves /metrics, /healthz and /readyz on DIM_METRICS_PORT
# (default 9400; `dim up` gives its processes that port and the next ones).
ENV PATH=/opt/dim/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DIM_DATA_DIR=/var/lib/dim \
    DIM_GATEWAY_HOST=0.0.0.0 \
    DIM_GATEWAY_PORT=8000 \
    DIM_METRICS_HOST=0.0.0.0
USER dim
WORKDIR /var/lib/dim
VOLUME ["/var/lib/dim"]
EXPOSE 8000 9400
# /healthz of the role PID 1 runs: the gateway's port for `gateway` and `up`, else the metrics port
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/opt/dim/venv/bin/python", "/opt/dim/healthcheck.py"]
ENTRYPOINT ["dim"]
CMD ["--help"]
