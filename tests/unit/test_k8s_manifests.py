"""infra/k8s as a cluster would get it: each overlay rendered by `kubectl kustomize`, every object
checked against the Kubernetes OpenAPI schemas (kubernetes-validate, offline) and the KEDA
ScaledObject against KEDA's CRD schema (vendored); every container's args parse with dim's own
parser, every DIM_* variable is a setting with a valid value, and the autoscaler watches the
consumer the workers really pull from. How the objects refer to each other:
test_k8s_wiring.py."""

from __future__ import annotations

import json
import os
import tomllib
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from events.subjects import Names
from services.settings import Settings
from services.worker.intake import model_durable
from tests.k8s_render import (
    K8S,
    KUBECTL,
    NO_KUBECTL,
    OVERLAYS,
    ROOT,
    container_env,
    dim_args,
    overlay_namespace,
    pod_specs,
)

# the oldest Kubernetes these manifests are written for (docs/deploy.md), and the newest bundled
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason=NO_KUBECTL)

Doc = dict[str, Any]


@needs_kubectl
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid_kubernetes(
    rendered: dict[str, list[Doc]], made_by_script: list[Doc], version: str
) -> None:
    docs = [d for objs in rendered.values() for d in objs] + made_by_script
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD's kind: test_scaled_object_is_valid_keda
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
        checked += 1
    assert checked >= 20


@needs_kubectl
def test_the_schemas_do_refuse_a_broken_object(rendered: dict[str, list[Doc]]) -> None:
    gateway = next(d for d in rendered["gpu"] if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(gateway))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def _keda_schema() -> Doc:
    crd = yaml.safe_load((K8S / "vendor" / "keda.sh_scaledobjects.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return dict(version["schema"]["openAPIV3Schema"])


@needs_kubectl
def test_scaled_object_is_valid_keda(rendered: dict[str, list[Doc]]) -> None:
    scaled = [d for d in rendered["gpu"] if d["kind"] == "ScaledObject"]
    assert len(scaled) == 1 and scaled[0]["apiVersion"] == "keda.sh/v1alpha1"
    schema = _keda_schema()
    jsonschema.Draft7Validator(schema).validate(scaled[0])
    broken = json.loads(json.dumps(scaled[0]))
    del broken["spec"]["scaleTargetRef"]["name"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(broken)


@needs_kubectl
def test_scaled_object_watches_the_workers_model_consumer(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["gpu"]
    (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
    target = scaled["spec"]["scaleTargetRef"]
    (worker,) = [
        d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]
    ]
    container = worker["spec"]["template"]["spec"]["containers"][0]
    args = dim_args(container)
    env = container_env(docs, container)
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "nats-jetstream"
    assert meta["stream"] == Names(str(env["DIM_NAMESPACE"])).tasks_stream
    assert meta["consumer"] == model_durable(args.model)
    assert meta["lagThreshold"] == str(args.capacity)  # a worker per `capacity` tasks
    # the NATS chart's headless Service (release `nats`) in the overlay's namespace
    namespace = overlay_namespace("gpu")
    assert (
        meta["natsServerMonitoringEndpoint"] == f"nats-headless.{namespace}.svc.cluster.local:8222"
    )
    assert meta["account"] == "$G"  # auth.conf's `authorization` users live in the global account
    assert scaled["spec"]["minReplicaCount"] >= 1  # a job with no live node fails in seconds


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_run_real_dim_commands_with_real_settings(
    rendered: dict[str, list[Doc]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[overlay]
    roles = set()
    version = _project_version()
    for workload, pod in pod_specs(docs):
        for container in pod["spec"]["containers"]:
            assert container["image"] == f"dim:{version}", workload["metadata"]["name"]
            args = dim_args(container)
            roles.add(args.command)
            env = container_env(docs, container)
            unknown = {
                k
                for k in env
                if k.startswith("DIM_") and k[4:].lower() not in Settings.model_fields
            }
            assert not unknown, f"{workload['metadata']['name']}: not dim settings: {unknown}"
            for key in [k for k in os.environ if k.startswith("DIM_")]:
                monkeypatch.delenv(key)
            for key, value in env.items():
                if key.startswith("DIM_") and value is not None:
                    monkeypatch.setenv(key, value)
            Settings()  # every value parses as its setting
    workers = {"gpu": "vllm", "upstream": "openai"}[overlay]
    assert roles == {"gateway", "orchestrator", "projector", "batcher", "worker"}
    engines = {
        getattr(dim_args(c), "engine", None)
        for _, p in pod_specs(docs)
        for c in p["spec"]["containers"]
    }
    assert engines == {None, workers}


def _project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])
