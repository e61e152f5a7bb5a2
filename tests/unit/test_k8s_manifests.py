"""infra/k8s as a cluster would get it: each overlay rendered by `kubectl kustomize`, every object
checked against the Kubernetes OpenAPI schemas (kubernetes-validate, offline) and the KEDA
ScaledObject against KEDA's CRD schema (vendored); then what no schema knows: every Secret and
ConfigMap named exists (rendered, made by infra/k8s/secrets.sh from a real `dim nats-config`
directory, or documented for the operator to create), every Service and budget selects pods,
every container's args parse with dim's own parser, every DIM_* variable is a setting with a
valid value, probes and scrape annotations name the ports dim serves on, and the autoscaler
watches the consumer the workers really pull from."""

from __future__ import annotations

import argparse
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from events.subjects import Names
from services.cli import parser
from services.nats_auth import ROLES, inbox_prefix
from services.settings import Settings
from services.worker.intake import model_durable
from tests import k8s_render
from tests.k8s_render import K8S, KUBECTL, NO_KUBECTL, OVERLAYS, ROOT

# the oldest Kubernetes these manifests are written for (docs/deploy.md), and the newest bundled
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# Made by the operator by hand (docs/deploy.md says how), with the keys the manifests read.
OPERATOR_SECRETS = {
    "dim-jwt": {"secret"},
    "dim-upstream-key": {"api-key"},
    "dim-hf-token": {"token"},
}
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason=NO_KUBECTL)

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


def _pod_specs(docs: list[Doc]) -> list[tuple[Doc, Doc]]:
    """(workload, its pod template) of every Deployment and StatefulSet."""
    return [(d, d["spec"]["template"]) for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def _overlay_namespace(name: str) -> str:
    return str(
        yaml.safe_load((K8S / "overlays" / name / "kustomization.yaml").read_text())["namespace"]
    )


def _config(docs: list[Doc], name: str) -> dict[str, str]:
    """The data of the ConfigMap named `name` (a generated one, by its hashed name)."""
    return next(
        d["data"] for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name
    )


def _container_env(docs: list[Doc], container: Doc) -> dict[str, str | None]:
    """Every variable a container gets: its ConfigMaps' data, then its own (None: from a Secret
    or a field of the pod)."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        env |= _config(docs, source["configMapRef"]["name"])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value")
    return env


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


def _args(container: Doc) -> argparse.Namespace:
    return parser().parse_args(container["args"])  # exits (SystemExit) on anything not dim's


@needs_kubectl
def test_scaled_object_watches_the_workers_model_consumer(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["gpu"]
    (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
    target = scaled["spec"]["scaleTargetRef"]
    (worker,) = [
        d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]
    ]
    container = worker["spec"]["template"]["spec"]["containers"][0]
    args = _args(container)
    env = _container_env(docs, container)
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "nats-jetstream"
    assert meta["stream"] == Names(str(env["DIM_NAMESPACE"])).tasks_stream
    assert meta["consumer"] == model_durable(args.model)
    assert meta["lagThreshold"] == str(args.capacity)  # a worker per `capacity` tasks
    # the NATS chart's headless Service (release `nats`) in the overlay's namespace
    namespace = _overlay_namespace("gpu")
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
    for workload, pod in _pod_specs(docs):
        for container in pod["spec"]["containers"]:
            assert container["image"] == f"dim:{version}", workload["metadata"]["name"]
            args = _args(container)
            roles.add(args.command)
            env = _container_env(docs, container)
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
        getattr(_args(c), "engine", None)
        for _, p in _pod_specs(docs)
        for c in p["spec"]["containers"]
    }
    assert engines == {None, workers}


def _project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def _refs(pod: Doc) -> set[tuple[str, str, str | None]]:
    """(kind, name, key or None) of every Secret and ConfigMap a pod template reads."""
    refs: set[tuple[str, str, str | None]] = set()
    spec = pod["spec"]
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            refs.add(("Secret", volume["secret"]["secretName"], None))
        if "configMap" in volume:
            refs.add(("ConfigMap", volume["configMap"]["name"], None))
    for container in spec["containers"]:
        for source in container.get("envFrom", []):
            refs.add(("ConfigMap", source["configMapRef"]["name"], None))
        for var in container.get("env", []):
            ref = var.get("valueFrom", {})
            if "secretKeyRef" in ref:
                refs.add(("Secret", ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]))
            if "configMapKeyRef" in ref:
                refs.add(
                    ("ConfigMap", ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"])
                )
    return refs


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_and_config_map_named_exists(
    rendered: dict[str, list[Doc]], made_by_script: list[Doc], overlay: str
) -> None:
    docs = rendered[overlay]
    made = {
        (d["kind"], d["metadata"]["name"]): set(d.get("data", {}))
        for d in docs + made_by_script
        if d["kind"] in ("Secret", "ConfigMap")
    }
    made |= {("Secret", name): keys for name, keys in OPERATOR_SECRETS.items()}
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text().split("## Kubernetes", 1)[1]
    for name in OPERATOR_SECRETS:
        assert name in deploy_doc, f"docs/deploy.md does not say how to create Secret {name}"
    for workload, pod in _pod_specs(docs):
        for kind, name, key in _refs(pod):
            assert (kind, name) in made, f"{workload['metadata']['name']} reads {kind} {name}"
            if key is not None:
                assert key in made[(kind, name)], f"{kind} {name} has no key {key}"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_files_named_in_settings_and_args_are_mounted(
    rendered: dict[str, list[Doc]], made_by_script: list[Doc], overlay: str
) -> None:
    """DIM_NATS_NKEY_SEED, DIM_NATS_TLS_CA and --join name a key of a mounted Secret or
    ConfigMap; a service's seed and inbox prefix are its role's; --data-dir and
    DIM_MODEL_CACHE_DIR lie on a writable volume."""
    docs = rendered[overlay]
    data = {
        (d["kind"], d["metadata"]["name"]): set(d.get("data", {})) for d in docs + made_by_script
    }
    for workload, pod in _pod_specs(docs):
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        for container in pod["spec"]["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            env = _container_env(docs, container)
            args = _args(container)
            join = getattr(args, "join", None)
            # a joining worker keeps its seed and the bundle's CA in --data-dir instead
            # (services/node_join.py)
            files = [join] if join else [env["DIM_NATS_NKEY_SEED"], env["DIM_NATS_TLS_CA"]]
            for path in filter(None, files):
                volume = volumes[mounts[str(Path(path).parent)]]
                source = (
                    ("Secret", volume["secret"]["secretName"])
                    if "secret" in volume
                    else ("ConfigMap", volume["configMap"]["name"])
                )
                assert Path(path).name in data[source], f"{path}: no such key in {source}"
            if not join:
                # a service connects as its own role: its seed, and the replies its server
                # permissions allow it (services/nats_auth.py)
                role = args.command
                assert role in ROLES
                assert Path(str(env["DIM_NATS_NKEY_SEED"])).stem == role
                assert env["DIM_NATS_INBOX_PREFIX"] == inbox_prefix(role)
            writable = [getattr(args, "data_dir", None), env.get("DIM_MODEL_CACHE_DIR")]
            for path in filter(None, writable):
                mount = next(m for m in mounts if path == m or path.startswith(m + "/"))
                assert mounts[mount] in claims, f"{path} is not on the pod's own volume"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_select_the_pods(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    pods = _pod_specs(docs)
    for workload, pod in pods:
        labels = pod["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        if workload["kind"] == "StatefulSet":
            (service,) = [
                d
                for d in docs
                if d["kind"] == "Service"
                and d["metadata"]["name"] == workload["spec"]["serviceName"]
            ]
            assert service["spec"]["selector"].items() <= labels.items()
    for doc in docs:
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"].items()
        elif doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"].items()
        else:
            continue
        chosen = [w for w, p in pods if selector <= p["metadata"]["labels"].items()]
        assert len(chosen) == 1, (
            f"{doc['kind']} {doc['metadata']['name']} selects {len(chosen)} workloads"
        )
        ports = {
            p["name"]
            for c in chosen[0]["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for port in doc["spec"].get("ports", []):
            assert port["targetPort"] in ports


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down_probed_and_scraped(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    for workload, pod in _pod_specs(docs):
        name = workload["metadata"]["name"]
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["automountServiceAccountToken"] is False, name
        (container,) = spec["containers"]
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        assert "memory" in container["resources"]["limits"], name
        env = _container_env(docs, container)
        # the gateway serves /healthz, /readyz and /metrics on its own port; the rest on the metrics port
        is_gateway = _args(container).command == "gateway"
        port = int(str(env["DIM_GATEWAY_PORT" if is_gateway else "DIM_METRICS_PORT"]))
        if not is_gateway:
            assert env["DIM_METRICS_HOST"] == "0.0.0.0", name
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe, path in (
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ):
            get = container[probe]["httpGet"]
            assert (get["path"], named[get["port"]]) == (path, port), f"{name} {probe}"
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert (annotations["prometheus.io/path"], int(annotations["prometheus.io/port"])) == (
            "/metrics",
            port,
        )
        if getattr(_args(container), "engine", None) == "vllm":
            limits = container["resources"]["limits"]
            assert limits["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"]
            assert int(limits["nvidia.com/gpu"]) == int(
                env.get("DIM_VLLM_TENSOR_PARALLEL_SIZE") or 1
            )
