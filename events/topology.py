"""Declarative specs of every stream and bucket, and their idempotent provisioning.

`provision` creates what is missing and reports — never silently rewrites — what differs from the
spec, because changing a live stream's retention or storage is an operator's decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from events.errors import ProvisioningError
from events.subjects import Names


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One stream as dim wants it."""

    name: str
    subjects: tuple[str, ...]
    retention: RetentionPolicy = RetentionPolicy.LIMITS
    storage: StorageType = StorageType.FILE
    max_age_s: float = 0.0
    deny_delete: bool = False
    deny_purge: bool = False
    duplicate_window_s: float = 120.0
    replicas: int = 1
    counter: bool = False
    max_msgs_per_subject: int = -1

    def config(self) -> StreamConfig:
        """The nats-py config for this spec."""
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            retention=self.retention,
            storage=self.storage,
            max_age=self.max_age_s or None,
            deny_delete=self.deny_delete,
            deny_purge=self.deny_purge,
            duplicate_window=self.duplicate_window_s,
            num_replicas=self.replicas,
            discard=DiscardPolicy.OLD,
            allow_direct=True,
            allow_msg_counter=self.counter or None,
            max_msgs_per_subject=self.max_msgs_per_subject,
        )

    def differences(self, actual: StreamConfig) -> list[str]:
        """What a live stream's config has other than this spec, in words."""
        want: dict[str, Any] = {
            "subjects": sorted(self.subjects),
            "retention": self.retention,
            "storage": self.storage,
            "max_age": self.max_age_s or 0.0,
            "deny_delete": self.deny_delete,
            "deny_purge": self.deny_purge,
            "num_replicas": self.replicas,
        }
        have: dict[str, Any] = {
            "subjects": sorted(actual.subjects or []),
            "retention": actual.retention,
            "storage": actual.storage,
            "max_age": actual.max_age or 0.0,
            "deny_delete": actual.deny_delete,
            "deny_purge": actual.deny_purge,
            "num_replicas": actual.num_replicas or 1,
        }
        return [
            f"stream {self.name}: {k} is {have[k]!r}, spec says {want[k]!r}"
            for k in want
            if _norm(have[k]) != _norm(want[k])
        ]


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """One key-value bucket as dim wants it."""

    name: str
    ttl_s: float = 0.0
    history: int = 1
    storage: StorageType = StorageType.FILE
    replicas: int = 1

    def config(self) -> KeyValueConfig:
        """The nats-py config for this spec."""
        return KeyValueConfig(
            bucket=self.name,
            ttl=self.ttl_s or None,
            history=self.history,
            storage=self.storage,
            replicas=self.replicas,
        )


@dataclass(frozen=True, slots=True)
class Topology:
    """Every stream and bucket of one namespace."""

    streams: tuple[StreamSpec, ...]
    buckets: tuple[BucketSpec, ...]
    object_stores: tuple[BucketSpec, ...] = ()


@dataclass(slots=True)
class ProvisionReport:
    """What `provision` found and did."""

    created: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)


def topology(
    names: Names,
    *,
    replicas: int = 1,
    dedupe_window_s: float = 120.0,
    tokens_max_age_s: float = 900.0,
    node_ttl_s: float = 6.0,
    idempotency_ttl_s: float = 86_400.0,
    session_ttl_s: float = 30 * 86_400.0,
    jobs_max_age_s: float = 0.0,
    views_ttl_s: float = 0.0,
    payloads_ttl_s: float = 0.0,
) -> Topology:
    """The streams and buckets the architecture names, under `names.ns`."""
    return Topology(
        streams=(
            StreamSpec(
                names.jobs_stream,
                (names.jobs_all,),
                max_age_s=jobs_max_age_s,
                deny_delete=True,
                deny_purge=True,
                duplicate_window_s=dedupe_window_s,
                replicas=replicas,
            ),
            StreamSpec(
                names.tasks_stream,
                (names.tasks_all,),
                retention=RetentionPolicy.WORK_QUEUE,
                duplicate_window_s=dedupe_window_s,
                replicas=replicas,
            ),
            StreamSpec(
                names.tokens_stream,
                (names.tokens_all,),
                storage=StorageType.MEMORY,
                max_age_s=tokens_max_age_s,
                duplicate_window_s=min(dedupe_window_s, tokens_max_age_s),
                replicas=replicas,
            ),
            StreamSpec(
                names.accounts_stream,
                (f"{names.ns}.accounts.>",),
                deny_delete=True,
                deny_purge=True,
                duplicate_window_s=dedupe_window_s,
                replicas=replicas,
            ),
            StreamSpec(
                names.rate_stream,
                (f"{names.ns}.rate.>",),
                storage=StorageType.MEMORY,
                max_age_s=180.0,
                duplicate_window_s=60.0,
                counter=True,
                max_msgs_per_subject=1,
                replicas=replicas,
            ),
            StreamSpec(
                names.nodes_stream,
                (names.nodes_all,),
                max_age_s=30 * 86_400.0,
                duplicate_window_s=dedupe_window_s,
                replicas=replicas,
            ),
            StreamSpec(
                names.batches_stream,
                (names.batches_all,),
                deny_delete=True,
                deny_purge=True,
                duplicate_window_s=dedupe_window_s,
                replicas=replicas,
            ),
            StreamSpec(
                names.dead_stream,
                (names.dead_all,),
                deny_delete=True,
                duplicate_window_s=dedupe_window_s,
                replicas=replicas,
            ),
        ),
        buckets=(
            BucketSpec(names.bucket("nodes"), ttl_s=node_ttl_s, replicas=replicas),
            BucketSpec(names.bucket("sessions"), ttl_s=session_ttl_s, replicas=replicas),
            BucketSpec(names.bucket("accounts"), replicas=replicas),
            BucketSpec(names.bucket("keys"), replicas=replicas),
            BucketSpec(names.bucket("idempotency"), ttl_s=idempotency_ttl_s, replicas=replicas),
            BucketSpec(names.bucket("jobs"), ttl_s=views_ttl_s, replicas=replicas),
            # <tenant>.<owner>.<job id> of every job: a tenant's listing reads only its own
            BucketSpec(names.bucket("job_index"), ttl_s=views_ttl_s, replicas=replicas),
            BucketSpec(names.bucket("usage"), replicas=replicas),
            # <tenant>.<job id>: tokens a running job holds of its tenant's daily quota
            BucketSpec(names.bucket("reservations"), ttl_s=2 * 24 * 3600.0, replicas=replicas),
            BucketSpec(names.bucket("queues"), replicas=replicas),
            BucketSpec(names.bucket("enrolled"), replicas=replicas),  # node id → its key
            # the Batch API: <tenant>.<file id> → a file's record; batch id → its view (a
            # projection); <tenant>.<owner>.<batch id> of every batch, for a tenant's listing
            BucketSpec(names.bucket("file_meta"), replicas=replicas),
            BucketSpec(names.bucket("batches"), replicas=replicas),
            BucketSpec(names.bucket("batch_index"), replicas=replicas),
        ),
        object_stores=(
            BucketSpec(names.bucket("payloads"), ttl_s=payloads_ttl_s, replicas=replicas),
            BucketSpec(names.bucket("files"), replicas=replicas),  # files' bytes (Batch API)
        ),
    )


async def provision(js: JetStreamContext, topo: Topology) -> ProvisionReport:
    """Create every missing stream and bucket of `topo`; report the ones that differ."""
    report = ProvisionReport()
    try:
        for spec in topo.streams:
            try:
                info = await js.stream_info(spec.name)
            except NotFoundError:
                await js.add_stream(spec.config())
                report.created.append(f"stream {spec.name}")
                continue
            report.present.append(f"stream {spec.name}")
            report.differences.extend(spec.differences(info.config))
        for bucket in topo.buckets:
            try:
                info = await js.stream_info(f"KV_{bucket.name}")
            except NotFoundError:
                await js.create_key_value(config=bucket.config())
                report.created.append(f"bucket {bucket.name}")
                continue
            report.present.append(f"bucket {bucket.name}")
            have_ttl = info.config.max_age or 0.0
            if abs(have_ttl - bucket.ttl_s) > 1e-6:
                report.differences.append(
                    f"bucket {bucket.name}: ttl is {have_ttl}s, spec says {bucket.ttl_s}s"
                )
        for store in topo.object_stores:
            try:
                await js.stream_info(f"OBJ_{store.name}")
            except NotFoundError:
                await js.create_object_store(
                    store.name,
                    ObjectStoreConfig(
                        storage=store.storage,
                        replicas=store.replicas,
                        ttl=store.ttl_s or None,
                    ),
                )
                report.created.append(f"object store {store.name}")
                continue
            report.present.append(f"object store {store.name}")
    except Exception as exc:
        raise ProvisioningError(f"could not provision JetStream: {exc!r}") from exc
    return report


def _norm(value: Any) -> Any:
    return getattr(value, "value", value)
