# Prometheus from Debian's package, on a Debian base, for the compose deployment where no image
# registry answers (infra/compose/compose.sh builds it as dim-prometheus:latest when missing).
# Where one answers, DIM_PROMETHEUS_IMAGE=prom/prometheus:<version> serves the same flags.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
