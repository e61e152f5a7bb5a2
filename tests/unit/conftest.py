"""Fixtures of the Kubernetes tests (test_k8s_*.py): what infra/k8s renders to."""

from __future__ import annotations

from typing import Any

import pytest

from tests import k8s_render
from tests.k8s_render import KUBECTL, NO_KUBECTL, OVERLAYS

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    """Each overlay's objects, as `kubectl kustomize` renders them."""
    if KUBECTL is None:
        pytest.skip(NO_KUBECTL)
    return {name: k8s_render.overlay(name) for name in OVERLAYS}


@pytest.fixture(scope="module")
def made_by_script(tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    """What infra/k8s/secrets.sh prints for a security directory `dim nats-config` wrote."""
    if KUBECTL is None:
        pytest.skip(NO_KUBECTL)
    return k8s_render.secrets(k8s_render.security_dir(tmp_path_factory.mktemp("nats-dim")))
