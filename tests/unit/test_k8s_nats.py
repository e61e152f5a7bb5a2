"""infra/k8s/nats/values.yaml, the official NATS chart's values for dim's JetStream cluster.

No helm binary is at hand, so the chart is not rendered here. What is checked: every key the
values set is one of the chart's (its values.yaml, vendored; the chart ships no schema), they ask
for what dim needs (3 servers, file storage, `sync_interval: always`, TLS on clients and routes,
dim's auth.conf included), the Secrets they name are the ones infra/k8s/secrets.sh makes, the
server certificate `dim nats-config` makes with the documented hosts carries the names clients
and routes dial, and the real nats-server accepts a configuration shaped as the chart
(2.14.2, files/config/*.yaml) writes it from these values, with dim's files where the Secrets
are mounted."""

from __future__ import annotations

import posixpath
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from services.nats_server import nats_server_binary
from tests import k8s_render
from tests.k8s_render import K8S, KUBECTL, NATS_HOSTS, NO_KUBECTL, ROOT

CONFIG_DIR = "/etc/nats-config"  # where the chart mounts nats.conf


def _paths(values: Any, chart: Any, at: str = "") -> list[str]:
    """Paths in `values` the chart does not have; below a chart value that is an empty map or
    a list (merge, patch, env, resources ...) anything goes."""
    if not isinstance(values, dict):
        return []
    if chart == {} or isinstance(chart, list):
        return []
    if not isinstance(chart, dict):
        return [at]
    missing = []
    for key, value in values.items():
        if key not in chart:
            missing.append(f"{at}.{key}")
        else:
            missing += _paths(value, chart[key], f"{at}.{key}")
    return missing


def test_every_key_set_is_one_of_the_charts() -> None:
    assert _paths(k8s_render.nats_values(), k8s_render.chart_values()) == []
    # and the check does catch one that is not
    assert _paths({"config": {"jetstream": {"fileStorage": {}}}}, k8s_render.chart_values()) == [
        ".config.jetstream.fileStorage"
    ]


def _dim_env() -> dict[str, str]:
    lines = (K8S / "base" / "dim.env").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return dict(pairs)


def _auth_mount(values: dict[str, Any]) -> tuple[str, str]:
    """(where auth.conf is mounted in the nats container, the Secret mounted there)."""
    (mount,) = [p["value"] for p in values["container"]["patch"] if p["path"] == "/volumeMounts/-"]
    (volume,) = [
        p["value"] for p in values["podTemplate"]["patch"] if p["path"] == "/spec/volumes/-"
    ]
    assert mount["name"] == volume["name"]
    return mount["mountPath"], volume["secret"]["secretName"]


def _include(values: dict[str, Any]) -> str:
    (key,) = [k for k in values["config"]["merge"] if k.endswith("$include")]
    return str(values["config"]["merge"][key])


def test_the_values_ask_for_what_dim_needs() -> None:
    values = k8s_render.nats_values()
    config = values["config"]
    assert config["cluster"]["enabled"] is True
    assert config["cluster"]["replicas"] == 3 == int(_dim_env()["DIM_REPLICAS"])  # R3 streams
    assert config["jetstream"]["enabled"] and config["jetstream"]["fileStore"]["enabled"]
    assert config["jetstream"]["merge"]["sync_interval"] == "always"
    assert config["nats"]["tls"]["enabled"] and config["cluster"]["tls"]["enabled"]
    assert config["cluster"]["tls"]["merge"]["verify"] is True  # routes: mutual TLS
    assert values["tlsCA"]["enabled"] is True
    # auth.conf: the include, relative to the chart's nats.conf, lands in the Secret's mount
    mount, secret = _auth_mount(values)
    assert posixpath.normpath(posixpath.join(CONFIG_DIR, _include(values))) == f"{mount}/auth.conf"
    assert secret == "dim-nats-auth"
    # dim dials the chart's client Service, named after the release
    assert _dim_env()["DIM_NATS_URL"] == "nats://nats:4222"


@pytest.mark.skipif(KUBECTL is None, reason=NO_KUBECTL)
def test_the_secrets_named_are_the_ones_secrets_sh_makes(tmp_path: Path) -> None:
    made = {
        d["metadata"]["name"]: set(d["data"])
        for d in k8s_render.secrets(k8s_render.security_dir(tmp_path))
        if d["kind"] == "Secret"
    }
    values = k8s_render.nats_values()
    for tls in (values["config"]["nats"]["tls"], values["config"]["cluster"]["tls"]):
        assert {tls["cert"], tls["key"]} <= made[tls["secretName"]]
    assert values["tlsCA"]["key"] in made[values["tlsCA"]["secretName"]]
    _, auth_secret = _auth_mount(values)
    assert posixpath.basename(_include(values)) in made[auth_secret]


def test_the_certificate_names_what_clients_and_routes_dial(tmp_path: Path) -> None:
    nats_dir = k8s_render.security_dir(tmp_path)
    cert = x509.load_pem_x509_certificate((nats_dir / "tls" / "server.pem").read_bytes())
    names = set(
        cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
    )
    replicas = k8s_render.nats_values()["config"]["cluster"]["replicas"]
    # the chart's routes (files/config/cluster.yaml, useFQDN false): <release>-<i>.<release>-headless
    routes = {f"nats-{i}.nats-headless" for i in range(replicas)}
    assert routes | {"nats"} <= names
    # and the command docs/deploy.md gives makes that certificate
    section = (ROOT / "docs" / "deploy.md").read_text().split("## Kubernetes", 1)[1]
    for host in NATS_HOSTS:
        assert f"--host {host} " in section or f"--host {host}\n" in section, host


def _chart_config(values: dict[str, Any], root: Path) -> str:
    """nats.conf as the chart writes it from `values` (files/config/{config,tls,cluster,
    jetstream}.yaml, then `merge`), its container paths moved under `root`."""
    chart = k8s_render.chart_values()
    config = values["config"]

    def tls(block: dict[str, Any], default_dir: str) -> str:
        d = f"{root}{block.get('dir', default_dir)}"
        ca = f"{root}{chart['tlsCA']['dir']}/{values['tlsCA']['key']}"
        extra = "".join(f", {k}: {str(v).lower()}" for k, v in block.get("merge", {}).items())
        return f'{{cert_file: "{d}/{block["cert"]}", key_file: "{d}/{block["key"]}", ca_file: "{ca}"{extra}}}'

    js = config["jetstream"]
    routes = ", ".join(
        f"tls://nats-{i}.nats-headless:{chart['config']['cluster']['port']}"
        for i in range(config["cluster"]["replicas"])
    )
    return "\n".join(
        [
            "{",
            'server_name: "nats-0"',
            "lame_duck_grace_period: 10s",
            "lame_duck_duration: 30s",
            f"port: {chart['config']['nats']['port']}",
            f"tls: {tls(config['nats']['tls'], chart['config']['nats']['tls']['dir'])}",
            f"cluster: {{name: nats, port: {chart['config']['cluster']['port']}, no_advertise: true,"
            f" routes: [{routes}], tls: {tls(config['cluster']['tls'], chart['config']['cluster']['tls']['dir'])}}}",
            f"http_port: {chart['config']['monitor']['port']}",
            f"jetstream: {{max_memory_store: {js['memoryStore']['maxSize']},"
            f' store_dir: "{root}{js["fileStore"]["dir"]}", max_file_store: {js["fileStore"]["pvc"]["size"]},'
            f" sync_interval: {js['merge']['sync_interval']}}}",
            f"max_payload: {config['merge']['max_payload'].strip('<> ')}",
            f"include {_include(values)};",
            "}",
        ]
    )


def test_nats_server_accepts_the_configuration_with_dims_files(tmp_path: Path) -> None:
    values = k8s_render.nats_values()
    chart = k8s_render.chart_values()
    nats_dir = k8s_render.security_dir(tmp_path / "nats-dim")
    root = tmp_path / "pod"
    # each Secret's files where the pod mounts it (secrets.sh: the same file names)
    mounts = {
        values["config"]["nats"]["tls"].get("dir", chart["config"]["nats"]["tls"]["dir"]): [
            "tls/server.pem",
            "tls/server-key.pem",
        ],
        chart["config"]["cluster"]["tls"]["dir"]: ["tls/server.pem", "tls/server-key.pem"],
        chart["tlsCA"]["dir"]: ["tls/ca.pem"],
        _auth_mount(values)[0]: ["auth.conf"],
    }
    for where, files in mounts.items():
        (root / where.lstrip("/")).mkdir(parents=True, exist_ok=True)
        for name in files:
            (root / where.lstrip("/") / Path(name).name).write_bytes((nats_dir / name).read_bytes())
    conf = root / CONFIG_DIR.lstrip("/") / "nats.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(_chart_config(values, root))

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [nats_server_binary(), "-t", "-c", str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    ok = check()
    assert ok.returncode == 0, ok.stderr + ok.stdout
    # the include is really read: without auth.conf the server refuses the configuration
    (root / _auth_mount(values)[0].lstrip("/") / "auth.conf").unlink()
    refused = check()
    assert refused.returncode != 0 and "auth.conf" in refused.stderr + refused.stdout


# The chart itself, rendered: where a Helm renderer is at hand (tests/k8s_render.py says which).
needs_renderer = pytest.mark.skipif(
    k8s_render.chart_renderer() is None, reason=k8s_render.NO_RENDERER
)


@pytest.fixture(scope="module")
def chart_objects() -> list[dict[str, Any]]:
    """The vendored NATS chart rendered with infra/k8s/nats/values.yaml."""
    if k8s_render.chart_renderer() is None:
        pytest.skip(k8s_render.NO_RENDERER)
    return k8s_render.chart(k8s_render.nats_values())


@needs_renderer
def test_the_chart_renders_valid_kubernetes(chart_objects: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    kinds = sorted(d["kind"] for d in chart_objects)
    assert kinds == ["ConfigMap", "PodDisruptionBudget", "Service", "Service", "StatefulSet"]
    for version in ("1.30.0", kubernetes_validate.latest_version()):
        for doc in chart_objects:
            kubernetes_validate.validate(doc, version, strict=True)


@needs_renderer
@pytest.mark.skipif(KUBECTL is None, reason=NO_KUBECTL)
def test_the_rendered_servers_run_with_dims_secrets(
    chart_objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The chart's nats.conf, with every Secret the pod mounts (as secrets.sh makes them from a
    `dim nats-config` directory) where it mounts them, passes `nats-server -t`; the config
    reloader watches auth.conf, so an updated Secret reloads the servers."""
    import base64

    (config_map,) = [d for d in chart_objects if d["kind"] == "ConfigMap"]
    (servers,) = [d for d in chart_objects if d["kind"] == "StatefulSet"]
    assert servers["spec"]["replicas"] == 3
    pod = servers["spec"]["template"]["spec"]
    nats, reloader = pod["containers"]
    secrets = {
        d["metadata"]["name"]: d["data"]
        for d in k8s_render.secrets(k8s_render.security_dir(tmp_path / "nats-dim"))
        if d["kind"] == "Secret"
    }
    root = tmp_path / "pod"
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in nats["volumeMounts"]:
        volume = volumes.get(mount["name"], {})
        if "secret" not in volume:
            continue
        where = root / mount["mountPath"].lstrip("/")
        where.mkdir(parents=True)
        for key, value in secrets[volume["secret"]["secretName"]].items():
            (where / key).write_bytes(base64.b64decode(value))
    # the configuration's absolute paths moved under root; the include stays relative
    text = config_map["data"]["nats.conf"].replace('": "/', f'": "{root}/')
    conf = root / CONFIG_DIR.lstrip("/") / "nats.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(text)
    env = {"SERVER_NAME": "nats-0", "PATH": "/usr/bin:/bin"}
    run = [nats_server_binary(), "-t", "-c", str(conf)]
    ok = subprocess.run(run, capture_output=True, text=True, timeout=30, env=env, check=False)
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert "sync_interval" in text and '"always"' in text
    auth_path = posixpath.normpath(posixpath.join(CONFIG_DIR, _include(k8s_render.nats_values())))
    assert auth_path in reloader["args"]
    assert any(m["mountPath"] == posixpath.dirname(auth_path) for m in reloader["volumeMounts"])
