"""The one settings object: built from ``DIM_*`` environment variables at start-up and passed down.

Nothing else in dim reads ``os.environ``. Every field has a default and a one-line doc; the CLI
overrides fields from its flags with `Settings.model_copy`.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from events.capabilities import EVERY, Capability
from events.connection import DEFAULT_INBOX_PREFIX, NatsAuth
from events.subjects import Names, check_id

# Subject tokens separated by dots: no wildcards, whitespace or empty tokens.
_SUBJECT_PREFIX = re.compile(r"[^.*>\s]+(\.[^.*>\s]+)*")


def _default_node_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
    return (host or "node")[:100]


def _exporters(value: str) -> tuple[str, ...]:
    return tuple(e.strip().lower() for e in value.split(",") if e.strip())


class Settings(BaseSettings):
    """Every knob of every dim process."""

    model_config = SettingsConfigDict(
        env_prefix="DIM_", frozen=True, extra="ignore", populate_by_name=True
    )

    # bus
    nats_url: str = Field(
        "nats://127.0.0.1:4222", description="NATS server URL(s), comma-separated"
    )
    namespace: str = Field("dim", description="prefix of every subject, stream and bucket")
    replicas: int = Field(1, ge=1, le=5, description="replicas of file streams (3 on a cluster)")
    connect_timeout_s: float = Field(5.0, gt=0, description="time allowed to reach NATS at start")
    publish_timeout_s: float = Field(5.0, gt=0, description="time to wait for one JetStream ack")
    publish_retries: int = Field(
        3, ge=0, description="retries (same message id) after an ack timeout"
    )
    dedupe_window_s: float = Field(
        120.0, gt=0, description="JetStream duplicate window for message ids"
    )
    payload_inline_max_bytes: int = Field(
        256 * 1024,
        ge=1024,
        le=900_000,
        description="events larger than this go to the payloads object store (by reference)",
    )
    tokens_max_age_s: float = Field(
        900.0, gt=0, description="how long token chunks are kept for resume"
    )
    jobs_retention_s: float = Field(
        0.0,
        ge=0,
        description="how long job events are kept in the JOBS stream (0: for ever; set when "
        "the streams are provisioned, `dim provision`)",
    )
    views_ttl_s: float = Field(
        0.0,
        ge=0,
        description="how long a job's view and index entry live after their last write (0: for ever)",
    )
    payloads_ttl_s: float = Field(
        0.0,
        ge=0,
        description="how long large event payloads are kept (0: for ever; keep it at least as long as the events that point at them)",
    )

    # bus identity and TLS (every process and the CLI)
    nats_creds: Path | None = Field(
        None, description="NATS credentials file (user JWT and NKey seed) this process connects as"
    )
    nats_nkey_seed: Path | None = Field(
        None, description="file holding the NKey user seed (SU...) this process connects as"
    )
    nats_user: str | None = Field(None, description="NATS user this process connects as")
    nats_password: SecretStr | None = Field(None, description="password of DIM_NATS_USER")
    nats_tls_ca: Path | None = Field(
        None, description="PEM CA the NATS server's certificate must chain to (else the system's)"
    )
    nats_tls_cert: Path | None = Field(
        None, description="PEM client certificate to present to NATS (with DIM_NATS_TLS_KEY)"
    )
    nats_tls_key: Path | None = Field(None, description="private key of DIM_NATS_TLS_CERT")
    nats_tls_hostname: str | None = Field(
        None, description="name the NATS server's certificate must carry, if not the URL's host"
    )
    nats_inbox_prefix: str = Field(
        DEFAULT_INBOX_PREFIX,
        description="subject prefix of this process's reply inboxes (a server may confine each "
        "identity to its own)",
    )

    # embedded server (dim up)
    data_dir: Path = Field(Path(".dim"), description="where `dim up` keeps nats-server's store")
    nats_port: int = Field(
        4222, ge=0, le=65535, description="client port of the embedded nats-server"
    )
    nats_listen: str = Field(
        "127.0.0.1",
        description="address the embedded nats-server listens on (0.0.0.0: every interface, "
        "for workers on other hosts)",
    )
    nats_secure: bool = Field(
        True,
        description="`dim up` secures its nats-server: TLS, and one NATS identity per role with "
        "only the rights it needs (docs/security.md); false: open to every client, as before",
    )
    signed_nodes: bool | None = Field(
        None,
        description="believe only nodes signed by their enrolled keys: only such nodes get work, "
        "and a node's task reports count only with its valid signature (docs/security.md); "
        "unset: when this process connects to NATS with credentials (a secured bus)",
    )
    sched_batch: bool = Field(
        True,
        description="run dim's processes and the embedded nats-server under Linux's SCHED_BATCH "
        "CPU policy: a process woken by a message does not preempt the one running "
        "(services/cpu_policy.py); false: the default policy",
    )
    nats_gomaxprocs: int = Field(
        1,
        ge=0,
        description="cores the embedded nats-server runs Go code on at once (GOMAXPROCS); 1 by "
        "default: it shares the machine with dim's own processes, and one spares it the "
        "wake-ups between its threads; 0: Go's default (every core)",
    )

    # worker
    node_id: str = Field(default_factory=_default_node_id, description="this worker's node id")
    models: Annotated[tuple[str, ...], NoDecode] = Field(
        ("sim-small",), description="models this worker serves, comma-separated"
    )
    engine: Literal["simulated", "openai", "vllm"] = Field(
        "simulated", description="inference engine of this worker: simulated, openai, vllm"
    )
    model_aliases: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="other names of served models, 'alias=model,...' (openai: dim name=upstream name)",
    )
    metrics_port: int = Field(
        9400,
        ge=0,
        le=65535,
        description="port of /metrics, /healthz and /readyz of a worker, orchestrator, projector "
        "or batcher (0: any free port; `dim up` gives its processes this port and the next ones)",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="address of that server (0.0.0.0: every interface, for Prometheus and probes "
        "from other hosts or containers)",
    )
    model_cache_dir: Path | None = Field(
        None, description="where engines download and cache model weights (vLLM download_dir)"
    )
    # openai-upstream engine
    upstream_url: str = Field(
        "", description="base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8001/v1"
    )
    upstream_api_key: str = Field("", description="bearer token for the upstream server")
    upstream_connect_timeout_s: float = Field(5.0, gt=0, description="upstream connect timeout")
    upstream_read_timeout_s: float = Field(
        600.0, gt=0, description="longest silence allowed in an upstream stream"
    )
    upstream_capabilities: Annotated[tuple[Capability, ...], NoDecode] = Field(
        EVERY,
        description="what the upstream serves, every field passed through (comma-separated); "
        "narrow it for a server that ignores fields instead of refusing them",
    )
    # vLLM engine (see docs/engines.md)
    vllm_dtype: str = Field("auto", description="weights dtype: auto, half, bfloat16, float16 ...")
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="GPUs per model replica (TP)")
    vllm_pipeline_parallel_size: int = Field(1, ge=1, description="pipeline stages (PP)")
    vllm_gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="fraction of GPU memory vLLM may use"
    )
    vllm_max_model_len: int | None = Field(None, ge=1, description="context length cap")
    vllm_enable_prefix_caching: bool = Field(True, description="reuse KV cache of shared prefixes")
    vllm_quantization: str | None = Field(None, description="awq, gptq, fp8 ... (None: as saved)")
    vllm_max_num_seqs: int | None = Field(
        None,
        ge=1,
        description="sequences per batch; default DIM_CAPACITY (the worker keeps it full)",
    )
    vllm_tool_parser: str = Field(
        "",
        description="vLLM's tool-call parser for tool_choice auto (hermes, llama3_json, ...); "
        "required and named calls need none",
    )
    vllm_engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="more of vLLM's engine arguments as JSON, over dim's own, e.g. "
        '\'{"enforce_eager": true, "max_num_batched_tokens": 4096}\'',
    )
    capacity: int = Field(
        32, ge=1, le=4096, description="requests a worker keeps in flight at once"
    )
    tenants: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="tenants this worker serves, comma-separated (empty: all); such a node "
        "takes only tasks sent to it by name",
    )
    heartbeat_s: float = Field(
        2.0, gt=0, description="how often a worker refreshes its node record"
    )
    node_ttl_s: float = Field(6.0, gt=0, description="a node record older than this is not live")
    task_ack_wait_s: float = Field(30.0, gt=0, description="lease of a task before redelivery")
    task_max_deliver: int = Field(
        5, ge=1, description="deliveries of one task message before giving up"
    )
    task_timeout_s: float = Field(600.0, gt=0, description="longest one generation may run")
    drain_timeout_s: float = Field(
        30.0, gt=0, description="time a stopping worker gives in-flight work"
    )
    token_flush_ms: float = Field(
        15.0, ge=0, description="longest a token chunk waits before publishing"
    )
    token_flush_chars: int = Field(512, ge=1, description="chunk size that forces a publish")

    # simulated engine
    sim_ttft_ms: float = Field(30.0, ge=0, description="simulated time to first token")
    sim_tokens_per_s: float = Field(80.0, ge=0, description="simulated decode speed; 0 = no delay")
    sim_error_rate: float = Field(0.0, ge=0, le=1, description="fraction of requests that fail")
    sim_hang_rate: float = Field(
        0.0, ge=0, le=1, description="fraction of requests that never finish"
    )
    sim_crash_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="fraction of requests on which the engine crashes with an unexpected error",
    )
    sim_seed: int = Field(0, description="seed mixed into every simulated output")
    sim_max_context: int = Field(
        32_768, ge=1, description="context length the simulated engine advertises (tokens)"
    )
    sim_capabilities: Annotated[tuple[Capability, ...], NoDecode] = Field(
        EVERY,
        description="what the simulated engine serves (comma-separated; default all it can)",
    )

    # orchestrator and projector
    instance_id: str = Field("0", description="stable id of this orchestrator/projector instance")
    max_attempts: int = Field(3, ge=1, le=20, description="default attempts per task")
    projector_linger_ms: float = Field(
        50.0, ge=0, description="how long the projector gathers events before writing views"
    )
    recover_hours: float = Field(
        24.0, gt=0, description="an orchestrator starting takes up unfinished jobs this recent"
    )
    queue_depth: int = Field(
        64,
        ge=0,
        description="first attempts waiting per model in the shared queue; more are held and "
        "let through by priority, then round-robin across tenants (0: no holding back)",
    )
    tenant_queue_depth: int = Field(
        8,
        ge=0,
        description="first attempts of one tenant waiting per model in the shared queue beyond "
        "the free slots, so another tenant's task waits behind at most this many (0: no bound)",
    )
    dispatch_timeout_s: float = Field(
        10.0, gt=0, description="how long a job may wait with no live node for its model"
    )

    # gateway
    gateway_host: str = Field("127.0.0.1", description="address the gateway listens on")
    gateway_port: int = Field(8000, ge=0, le=65535, description="port the gateway listens on")
    max_prompt_bytes: int = Field(
        16 * 1024 * 1024,  # the largest body's prompt for each of 16 choices
        gt=0,
        description="the most prompt bytes one job's tasks may be given together, templates "
        "rendered at their worst (every output at max_tokens); checked before it is accepted",
    )
    max_body_bytes: int = Field(
        1_000_000, ge=1024, description="largest request body accepted (413 above)"
    )
    request_timeout_s: float = Field(
        600.0, gt=0, description="longest a completion request may wait"
    )
    plan_at_door: bool = Field(
        True,
        description="plan a job in the gateway when all its tasks can start at once on their "
        "models' shared subjects (one append fewer before the first token); off: orchestrators "
        "plan every job",
    )
    idempotency_ttl_s: float = Field(
        86_400.0, gt=0, description="how long an Idempotency-Key keeps returning the same job"
    )
    jwt_algorithm: Literal["HS256", "EdDSA"] = Field(
        "HS256", description="signing algorithm of access tokens"
    )
    jwt_secret: str = Field(
        "", description="HS256 signing key, shared by every gateway (required for HS256)"
    )
    jwt_private_key: str = Field(
        "", description="EdDSA (Ed25519) private key, PEM, shared by every gateway"
    )
    jwt_previous_secrets: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="HS256 secrets used before DIM_JWT_SECRET, comma-separated: tokens they "
        "signed (by their `kid`) stay valid until they expire (key rotation)",
    )
    jwt_previous_public_keys: str = Field(
        "",
        description="EdDSA public keys (PEM, one after another) of private keys used before "
        "DIM_JWT_PRIVATE_KEY: their tokens stay valid until they expire, and JWKS lists them",
    )
    access_ttl_s: float = Field(900.0, gt=0, description="lifetime of an access token")
    refresh_ttl_s: float = Field(
        30 * 86_400.0,
        gt=0,
        description="lifetime of a session past its last refresh (its refresh token)",
    )
    session_max_s: float = Field(
        90 * 86_400.0,
        gt=0,
        description="the most a session lives after login, however often it is refreshed",
    )
    open_registration: bool = Field(
        False, description="let anyone register a member account (else admins only)"
    )
    ws_first_message_s: float = Field(
        10.0,
        gt=0,
        description="how long a WebSocket may wait before its job request (closed after)",
    )
    ws_per_tenant: int = Field(
        100, ge=1, description="WebSockets one tenant may hold open at once, per gateway"
    )
    max_connections: int = Field(
        2000, ge=1, description="connections one gateway serves at once (503 beyond)"
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a request's line and headers must arrive within this of its first byte "
        "(or of the connection); else the connection is closed",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a request's body must arrive within this of its headers; else the "
        "connection is closed",
    )
    auth_rpm: int = Field(
        10,
        ge=0,
        description="logins, refreshes or registrations per minute per account (three times "
        "that per client address; 0: no limit)",
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="proxies whose X-Forwarded-For the gateway believes (comma-separated "
        "addresses, or *): the client address the per-address login limit counts",
    )
    max_keys_per_user: int = Field(
        20, ge=1, description="live API keys one user may hold (each has its own rate budget)"
    )
    rate_limit_rpm: int = Field(
        600, ge=0, description="requests per minute per API key or user (0: no limit)"
    )
    tenant_rate_limit_rpm: int = Field(
        6000,
        ge=0,
        description="requests per minute per tenant, all its keys and users together (0: no limit)",
    )
    tenant_daily_tokens: int = Field(
        0, ge=0, description="tokens a tenant may use per UTC day (0: no quota)"
    )
    default_max_tokens: int = Field(1024, ge=1, description="max_tokens when a request names none")
    max_held_per_tenant: int = Field(
        1_000,
        ge=0,
        description="a tenant's jobs held for capacity above which its new work gets 429 "
        "(0: no bound)",
    )
    max_queued_per_model: int = Field(
        10_000,
        ge=0,
        description="tasks waiting for a model above which new requests get 503 (0: no bound)",
    )

    # browsers (dashboard, CORS)
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="origins (scheme://host[:port], comma-separated, or *) whose pages may call "
        "the API from a browser; empty: no CORS headers at all (the dashboard at /ui is "
        "same-origin and needs none)",
    )
    ws_ticket_ttl_s: float = Field(
        30.0,
        gt=0,
        le=120,
        description="lifetime of a WebSocket ticket (POST /v1/ws-tickets); each opens one socket",
    )

    # Batch API (gateway and `dim batcher`)
    batch_in_flight: int = Field(
        32,
        ge=1,
        le=4096,
        description="lines of one batch running at once; the batch runner submits more as they end",
    )
    file_max_bytes: int = Field(
        100 * 1024 * 1024,
        ge=1024,
        description="largest file POST /v1/files accepts (413 above; checked before it is read)",
    )
    batch_max_lines: int = Field(
        50_000, ge=1, description="most requests one batch input file may hold (400 above)"
    )

    # observability (docs/metrics.md): logs, the access log, traces. The OTEL_* fields read the
    # standard OpenTelemetry variables (no DIM_ prefix); the exporters read their endpoint,
    # headers, timeout and TLS files, and the resource its OTEL_RESOURCE_ATTRIBUTES, themselves.
    log_level: str = Field("INFO", description="Python logging level")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="log lines as text, or json: one object per line with time, level, logger, "
        "message, request id and the current trace and span ids",
    )
    access_log: bool = Field(
        True,
        description="the gateway logs one line per HTTP request: method, path (no query), status, "
        "duration, request id, key and tenant",
    )
    otel_exporter: Literal["none", "console", "otlp"] | None = Field(
        None,
        description="where trace spans go, over OTEL_TRACES_EXPORTER: none, console, otlp "
        "(unset: OTEL_TRACES_EXPORTER; else otlp when an OTLP endpoint is set; else none)",
    )
    otel_endpoint: str = Field(
        "",
        description="OTLP traces endpoint, over OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT "
        "(http/protobuf: the whole URL, .../v1/traces; grpc: host and port)",
    )
    otel_traces_exporter: str = Field(
        "",
        validation_alias="OTEL_TRACES_EXPORTER",
        description="the standard variable: otlp, console or none, comma-separated for several",
    )
    otel_protocol: str = Field(
        "",
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"
        ),
        description="OTLP transport: http/protobuf (the default) or grpc (the standard "
        "variables; the traces one first)",
    )
    otel_otlp_endpoint: str = Field(
        "",
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
        description="the standard endpoint variables, read by the exporter itself; set, they "
        "turn the otlp exporter on when no exporter is named",
    )

    @field_validator(
        "models",
        "tenants",
        "jwt_previous_secrets",
        "cors_origins",
        "sim_capabilities",
        "upstream_capabilities",
        mode="before",
    )
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(m.strip() for m in value.split(",") if m.strip())
        return value

    @field_validator("model_aliases", mode="before")
    @classmethod
    def _split_aliases(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
            if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
                raise ValueError("model aliases are 'alias=model' pairs separated by commas")
            return {a.strip(): m.strip() for a, m in pairs}
        return value

    @field_validator("otel_traces_exporter")
    @classmethod
    def _known_exporters(cls, value: str) -> str:
        unknown = [e for e in _exporters(value) if e not in ("otlp", "console", "none")]
        if unknown:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}: dim exports spans with otlp "
                "(to a collector, Jaeger, Tempo ...), console or none"
            )
        return value

    @field_validator("otel_protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        if value.strip().lower() not in ("", "grpc", "http/protobuf"):
            raise ValueError(
                f"OTLP protocol {value!r}: dim's exporters speak grpc or http/protobuf "
                "(OpenTelemetry's Python SDK has no http/json exporter)"
            )
        return value.strip().lower()

    @field_validator("namespace")
    @classmethod
    def _valid_namespace(cls, value: str) -> str:
        Names(value)
        return value

    @field_validator("nats_inbox_prefix")
    @classmethod
    def _valid_inbox_prefix(cls, value: str) -> str:
        if not _SUBJECT_PREFIX.fullmatch(value):
            raise ValueError(
                "an inbox prefix is one or more subject tokens separated by dots, without "
                "wildcards or spaces, e.g. _INBOX or _INBOX_worker"
            )
        return value

    @field_validator(
        "nats_creds",
        "nats_nkey_seed",
        "nats_tls_ca",
        "nats_tls_cert",
        "nats_tls_key",
        "nats_user",
        "nats_password",
        "nats_tls_hostname",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("node_id", "instance_id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        return check_id("id", value)

    @classmethod
    def variable(cls, name: str) -> str:
        """The environment variable field `name` is read from (the first, for several)."""
        alias = cls.model_fields[name].validation_alias
        if isinstance(alias, str):
            return alias
        if isinstance(alias, AliasChoices):
            return str(alias.choices[0])
        return f"DIM_{name.upper()}"

    def to_env(self) -> dict[str, str]:
        """These settings as ``DIM_*`` variables, for a child process to start with the same
        (the standard OTEL_* ones it inherits as they are)."""
        env = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if value is None or field.validation_alias is not None:
                continue  # the child's default is None too; OTEL_* pass through the environment
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, dict) and name == "model_aliases":
                value = ",".join(f"{k}={v}" for k, v in value.items())
            elif isinstance(value, dict):  # parsed back as JSON
                value = json.dumps(value)
            env[f"DIM_{name.upper()}"] = str(value)
        return env

    @property
    def nats_auth(self) -> NatsAuth:
        """Who this process is to NATS, and how it checks the server; half-set credentials are a
        `NatsAuthError` naming them (not a validation error: that would print the input)."""
        return NatsAuth(
            creds=self.nats_creds,
            nkey_seed=self.nats_nkey_seed,
            user=self.nats_user,
            password=None if self.nats_password is None else self.nats_password.get_secret_value(),
            tls_ca=self.nats_tls_ca,
            tls_cert=self.nats_tls_cert,
            tls_key=self.nats_tls_key,
            tls_hostname=self.nats_tls_hostname,
        )

    @property
    def trace_exporters(self) -> tuple[str, ...]:
        """Where spans go (`otlp`, `console`; empty: nowhere): DIM_OTEL_EXPORTER if set, else
        OTEL_TRACES_EXPORTER, else otlp when an OTLP endpoint is set, else nowhere."""
        if self.otel_exporter is not None:
            named: tuple[str, ...] = (self.otel_exporter,)
        elif self.otel_traces_exporter.strip():
            named = _exporters(self.otel_traces_exporter)
        else:
            named = ("otlp",) if self.otel_endpoint or self.otel_otlp_endpoint else ()
        return tuple(dict.fromkeys(e for e in named if e != "none"))

    @property
    def signed_only(self) -> bool:
        """Whether only nodes signed by their enrolled keys are believed (`signed_nodes`)."""
        if self.signed_nodes is not None:
            return self.signed_nodes
        return bool(self.nats_creds or self.nats_nkey_seed or self.nats_user)

    @property
    def names(self) -> Names:
        """Subject, stream and bucket names of this deployment."""
        return Names(self.namespace)
