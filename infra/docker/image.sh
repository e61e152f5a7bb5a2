#!/bin/sh
# Build dim:<version> and dim:latest from the Dockerfile (`just image`). The base is BASE if set,
# else dim-base:bookworm when the engine has it (`just base-image`, for sites no registry
# answers), else the Dockerfile's default (python:3.11-slim-bookworm). EXTRAS=vllm adds vLLM.
# The build's downloads also trust the CAs this host added locally (Debian's and Ubuntu's
# /usr/local/share/ca-certificates/*.crt, e.g. an egress proxy's that re-signs TLS), or the PEM
# file DIM_BUILD_CA names instead; they stay out of the image.
# Prints the tag it built.
set -eu
cd "$(dirname "$0")/../.."
VERSION="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
if [ -z "${BASE:-}" ] && docker image inspect dim-base:bookworm >/dev/null 2>&1; then
  BASE=dim-base:bookworm
fi
set -- --network host -t "dim:$VERSION" -t dim:latest --label "org.opencontainers.image.version=$VERSION"
[ -n "${BASE:-}" ] && set -- "$@" --build-arg "BASE=$BASE"
if [ -n "${DIM_BUILD_CA:-}" ]; then
  set -- "$@" --build-arg "BUILD_CA_PEM=$(cat "$DIM_BUILD_CA")"
elif ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  set -- "$@" --build-arg "BUILD_CA_PEM=$(cat /usr/local/share/ca-certificates/*.crt)"
fi
[ -n "${EXTRAS:-}" ] && set -- "$@" --build-arg "EXTRAS=$EXTRAS"
echo "image: building dim:$VERSION (base ${BASE:-the Dockerfile's default})" >&2
docker build "$@" . >&2
echo "dim:$VERSION"
