"""infra/k8s rendered as a cluster would get it, for the tests of the Kubernetes deployment:
the kustomize overlays through `kubectl kustomize`, and the Secrets infra/k8s/secrets.sh makes
from a security directory `dim nats-config` wrote. Both need kubectl (offline: no cluster)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from events.subjects import Names
from services.cli import parser
from services.cli.nats_config import generate

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
NATS_CHART = K8S / "vendor" / "nats-chart"
OVERLAYS = ("gpu", "upstream")
KUBECTL = shutil.which("kubectl")
NO_KUBECTL = (
    "kubectl is not installed here: `kubectl kustomize` renders the overlays and "
    "`kubectl create --dry-run=client` the Secrets (install kubectl to run these checks)"
)
# The names `dim nats-config --host` gives the chart's release `nats` in the namespace dim: its
# client Service, and each server as its routes dial it (values.yaml, docs/deploy.md).
NATS_HOSTS = (
    "nats",
    "nats.dim.svc",
    "nats.dim.svc.cluster.local",
    *(f"nats-{i}.nats-headless" for i in range(3)),
)

Doc = dict[str, Any]


def _documents(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d]


def overlay(name: str) -> list[Doc]:
    """The objects of overlay `name`, as `kubectl kustomize` renders them."""
    assert KUBECTL is not None, NO_KUBECTL
    out = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return _documents(out.stdout)


def security_dir(out: Path) -> Path:
    """A security directory as `dim nats-config --out OUT --host ...` writes it for the chart."""
    generate(out, list(NATS_HOSTS), Names("dim"))
    return out


def secrets(nats_dir: Path) -> list[Doc]:
    """What infra/k8s/secrets.sh prints for the security directory `nats_dir`."""
    assert KUBECTL is not None, NO_KUBECTL
    env = {**os.environ, "DIM": str(Path(sys.executable).with_name("dim"))}
    out = subprocess.run(
        ["sh", str(K8S / "secrets.sh"), str(nats_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return _documents(out.stdout)


def nats_values() -> Doc:
    """infra/k8s/nats/values.yaml."""
    return dict(yaml.safe_load((K8S / "nats" / "values.yaml").read_text()))


def chart_values() -> Doc:
    """The NATS chart's own values.yaml (vendored)."""
    return dict(yaml.safe_load((NATS_CHART / "values.yaml").read_text()))


def chart_renderer() -> str | None:
    """What renders the NATS chart here: "helm" (a helm binary on PATH), "helm_python" (the
    helm-python-sdk package, Helm's Go SDK through ctypes, importable), or None."""
    if shutil.which("helm"):
        return "helm"
    try:
        import helm_python  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return None
    return "helm_python"


NO_RENDERER = (
    "no Helm renderer here: neither a helm binary on PATH nor the helm-python-sdk package "
    "(not a dependency of dim) to render the vendored NATS chart"
)


def chart(values: Doc) -> list[Doc]:
    """The NATS chart (vendored) rendered as `helm install nats --namespace dim` would, with
    `values`."""
    renderer = chart_renderer()
    assert renderer is not None, NO_RENDERER
    if renderer == "helm":
        out = subprocess.run(
            ["helm", "template", "nats", str(NATS_CHART), "--namespace", "dim", "-f", "-"],
            input=yaml.safe_dump(values),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        return _documents(out.stdout)
    import helm_python

    rendered = helm_python.Chart.load(str(NATS_CHART)).render(
        values, name="nats", namespace="dim", is_install=True
    )
    return [d for text in rendered.values() for d in _documents(text)]


def pod_specs(docs: list[Doc]) -> list[tuple[Doc, Doc]]:
    """(workload, its pod template) of every Deployment and StatefulSet."""
    return [(d, d["spec"]["template"]) for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def overlay_namespace(name: str) -> str:
    """The namespace overlay `name` puts everything in."""
    kustomization = yaml.safe_load((K8S / "overlays" / name / "kustomization.yaml").read_text())
    return str(kustomization["namespace"])


def container_env(docs: list[Doc], container: Doc) -> dict[str, str | None]:
    """Every variable a container gets: its ConfigMaps' data, then its own (None: from a Secret
    or a field of the pod)."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]  # a generated one by its hashed name
        env |= next(
            d["data"] for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name
        )
    for var in container.get("env", []):
        env[var["name"]] = var.get("value")
    return env


def dim_args(container: Doc) -> argparse.Namespace:
    """A container's args as `dim` parses them: exits (SystemExit) on anything not dim's."""
    return parser().parse_args(container["args"])
