"""The values of the key-value buckets, part of the contract: the node record a worker keeps in
the nodes bucket while it is alive (with its GPU facts), the key an admin enrolled for a node,
and a tenant's line in the queues bucket."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from events.capabilities import BASIC
from events.inference import unset


class GpuFact(BaseModel):
    """One GPU as a node advertises it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    index: int
    name: str
    memory_total_mib: int
    memory_free_mib: int


class TenantQueue(BaseModel):
    """What the queues bucket says of one tenant: its jobs held for capacity."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    held: int


class EnrolledKey(BaseModel):
    """What the enrolled bucket says of one node id: the public key an admin admitted for it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    public_key: str  # an NKey user key ("U...")
    enrolled_at: datetime
    by: str = ""  # who enrolled it (e.g. "dim up")


class NodeRecord(BaseModel):
    """What a node tells the mesh about itself, refreshed by every heartbeat."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    node_id: str
    models: tuple[str, ...]
    engine: str
    capacity: int
    in_flight: int = 0
    version: str
    hostname: str = ""
    pid: int = 0
    started_at: datetime
    heartbeat_at: datetime
    tasks_completed: int = 0
    tasks_failed: int = 0
    tokens_out: int = 0
    draining: bool = False
    # added with the engines issue; older records read as defaults
    max_context: int | None = None  # longest prompt + completion the engine takes (tokens)
    gpus: tuple[GpuFact, ...] = ()  # NVML facts where there is an NVIDIA GPU
    cold_start_s: float = 0.0  # loading and warming the engine before the node announced itself
    avg_latency_ms: float = 0.0  # mean task duration on this node
    metrics_url: str = ""  # this worker's Prometheus endpoint
    # added with the registry issue
    tenants: tuple[str, ...] = ()  # tenants this node serves (empty: every tenant)
    healthy: bool = True  # the engine answered its last health check
    queued: dict[str, int] = {}  # tasks waiting on each served model's shared subject
    # added later: older records read as unsigned (events/signing.py)
    public_key: str = ""  # the NKey ("U...") the node signs with
    # added with OpenAI fidelity: what its engine does per model (events/capabilities.py);
    # a model missing here (an older node) serves plain chat and completions
    capabilities: dict[str, tuple[str, ...]] = Field(default_factory=dict, exclude_if=unset)
    signature: str = ""  # Ed25519 over every other field, as written (base64url)

    def can(self, model: str) -> frozenset[str]:
        """What the node's engine does for `model`."""
        return frozenset(self.capabilities.get(model, BASIC))

    def fresh(self, now: datetime, ttl_s: float) -> bool:
        """Whether the node heartbeated within `ttl_s`."""
        return now - self.heartbeat_at <= timedelta(seconds=ttl_s)

    def live(self, now: datetime, ttl_s: float) -> bool:
        """Whether the node heartbeated within `ttl_s` and is not draining."""
        return not self.draining and self.fresh(now, ttl_s)
