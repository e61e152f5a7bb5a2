#!/bin/sh
# A Debian bookworm base image with Python 3.11, made from Debian's own packages, for sites where
# no image registry answers (`just base-image`). Elsewhere the Dockerfile's default base,
# python:3.11-slim-bookworm, is pulled instead and this is not needed.
#
#   infra/docker/base-image.sh [TAG] [MIRROR]    (default dim-base:bookworm, deb.debian.org)
#
# Needs root, debootstrap and a Docker engine; about 150 MB and a few minutes.
set -eu
TAG="${1:-dim-base:bookworm}"
MIRROR="${2:-${DEBIAN_MIRROR:-http://deb.debian.org/debian}}"
command -v debootstrap >/dev/null || { echo "base-image: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/dim-base.XXXXXX")"
trap 'rm -rf "$ROOTFS"' EXIT
echo "base-image: debootstrap bookworm (minbase, python3) from $MIRROR" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR" >&2
# what an image needs, not a system: no apt lists, docs or caches
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* \
    "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
echo "base-image: importing as $TAG" >&2
tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    - "$TAG" >/dev/null
docker run --rm "$TAG" python3 --version
echo "base-image: $TAG" >&2
