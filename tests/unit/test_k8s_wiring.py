"""How infra/k8s's objects refer to each other and to dim, rendered by `kubectl kustomize`: every
Secret and ConfigMap a pod reads exists (rendered, made by infra/k8s/secrets.sh from a real `dim
nats-config` directory, or documented for the operator to create) with the keys read, the files
the settings and args name are mounted there, a service connects as its own role, every Service
and budget selects one workload, and every pod is locked down, probed on the ports dim serves
its probes on, and scraped there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.nats_auth import ROLES, inbox_prefix
from tests.k8s_render import (
    KUBECTL,
    NO_KUBECTL,
    OVERLAYS,
    ROOT,
    container_env,
    dim_args,
    pod_specs,
)

# Made by the operator by hand (docs/deploy.md says how), with the keys the manifests read.
OPERATOR_SECRETS = {
    "dim-jwt": {"secret"},
    "dim-upstream-key": {"api-key"},
    "dim-hf-token": {"token"},
}
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason=NO_KUBECTL)

Doc = dict[str, Any]


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
    for workload, pod in pod_specs(docs):
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
    for workload, pod in pod_specs(docs):
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        for container in pod["spec"]["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            env = container_env(docs, container)
            args = dim_args(container)
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
    pods = pod_specs(docs)
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
    for workload, pod in pod_specs(docs):
        name = workload["metadata"]["name"]
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        (container,) = spec["containers"]
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        assert "memory" in container["resources"]["limits"], name
        env = container_env(docs, container)
        # the gateway serves /healthz, /readyz and /metrics on its own port; the rest on the metrics port
        is_gateway = dim_args(container).command == "gateway"
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
        if getattr(dim_args(container), "engine", None) == "vllm":
            limits = container["resources"]["limits"]
            assert limits["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"]
            assert int(limits["nvidia.com/gpu"]) == int(
                env.get("DIM_VLLM_TENSOR_PARALLEL_SIZE") or 1
            )
