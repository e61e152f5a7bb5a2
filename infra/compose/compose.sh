#!/bin/sh
# The compose deployment (docker-compose.yml), with what it needs first:
#
#   compose.sh up [SERVICE...]     build missing local images, write .env once, `up -d`
#   compose.sh down                stop everything and delete its volumes (all of its state)
#   compose.sh COMMAND ...         any other compose command, e.g.
#                                  compose.sh run --rm admin keys create --name me
#                                  compose.sh ps | logs -f gateway-1 | kill -s KILL sim-2
#
# Local images, built when missing: dim:latest (`just image`), dim-nats:latest (`just nats-image`)
# and, unless DIM_PROMETHEUS_IMAGE names another, dim-prometheus:latest (Debian's package). Set
# DIM_IMAGE / DIM_NATS_IMAGE to use others. COMPOSE_PROFILES=observability adds Grafana and the
# OpenTelemetry collector (upstream images: a registry must answer). Uses `docker compose` (v2)
# where present, else docker-compose (1.29). The project is "dim" unless COMPOSE_PROJECT_NAME.
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$HERE"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-dim}"
if docker compose version >/dev/null 2>&1; then
  compose() { docker compose "$@"; }
else
  compose() { docker-compose "$@"; }
fi

has_image() { docker image inspect "$1" >/dev/null 2>&1; }

images() {
  if [ -z "${DIM_IMAGE:-}" ] && ! has_image dim:latest; then
    echo "compose: no dim:latest; building it (just image)" >&2
    "$ROOT/infra/docker/image.sh" >/dev/null
  fi
  if [ -z "${DIM_NATS_IMAGE:-}" ] && ! has_image dim-nats:latest; then
    echo "compose: no dim-nats:latest; building it (just nats-image)" >&2
    "$ROOT/infra/docker/nats-image.sh" >/dev/null
  fi
  if [ -z "${DIM_PROMETHEUS_IMAGE:-}" ] && ! has_image dim-prometheus:latest; then
    base=debian:bookworm-slim
    has_image dim-base:bookworm && base=dim-base:bookworm
    echo "compose: no dim-prometheus:latest; building it from Debian's package on $base" >&2
    docker build --quiet --network host --build-arg "BASE=$base" -t dim-prometheus:latest \
      -f "$ROOT/infra/docker/prometheus.Dockerfile" "$ROOT/infra/docker" >/dev/null
  fi
}

secrets() {
  # the gateways' shared token-signing key, made once (compose reads .env beside the file)
  if [ -z "${DIM_JWT_SECRET:-}" ] && ! grep -q '^DIM_JWT_SECRET=' .env 2>/dev/null; then
    umask 077
    echo "DIM_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')" >> .env
    echo "compose: wrote DIM_JWT_SECRET into $HERE/.env" >&2
  fi
}

case "${1:-}" in
  up)
    shift
    images
    secrets
    compose up -d "$@"
    ;;
  down)
    shift
    compose --profile observability --profile tools down --volumes --remove-orphans "$@"
    ;;
  "")
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
  *)
    compose "$@"
    ;;
esac
