"""Admitting and revoking worker nodes: the admin's two steps, applied to every place that
must agree.

A node is admitted when (1) the NATS server(s) admit its key, with the permissions of a worker
serving its models — its file in each security directory, `auth.conf` rewritten, the server
reloaded — and (2) its key is enrolled, so the orchestrator, the projector and the gateway
believe what it signs. Approval enrolls first (the node's first record is believed) and reloads
last; revocation un-enrolls first (no new work is chosen for it, its running tasks are lost and
retried) and then reloads, which makes nats-server close the node's connections at once; its
node record is deleted with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from events.bus import Bus
from services.nats_dir import Approval, NatsDir
from services.registry.enrolled import enroll


@dataclass(frozen=True, slots=True)
class Applied:
    """What an admission step did to each security directory."""

    approval: Approval | None  # the node's approval (the one withdrawn, when revoking)
    reloaded: tuple[NatsDir, ...]  # directories whose running server was told to reload
    not_running: tuple[NatsDir, ...]  # directories with no server running to reload


async def approve_node(
    bus: Bus,
    dirs: list[NatsDir],
    node_id: str,
    public_key: str,
    models: tuple[str, ...],
    *,
    by: str,
) -> Applied:
    """Admit `public_key` as node `node_id` serving `models` in every directory of `dirs` and
    enroll it (replacing a key approved for that node before: a rotation)."""
    approval = None
    for d in dirs:  # every check (id, key, models, key taken) fails before anything is enrolled
        approval = d.approve(node_id, public_key, models, by=by)
    await enroll(bus, node_id, public_key, by=by)
    return _apply(bus, dirs, approval)


async def revoke_node(bus: Bus, dirs: list[NatsDir], node_id: str) -> Applied:
    """Withdraw node `node_id`: no longer enrolled, no longer admitted by any server of `dirs`,
    and its node record gone (it could not renew it, but would show until it expired)."""
    for bucket in ("enrolled", "nodes"):
        await (await bus.bucket(bucket)).delete(node_id)
    withdrawn = [d.revoke(node_id) for d in dirs]
    return _apply(bus, dirs, next((a for a in withdrawn if a is not None), None))


def _apply(bus: Bus, dirs: list[NatsDir], approval: Approval | None) -> Applied:
    reloaded: list[NatsDir] = []
    idle: list[NatsDir] = []
    for d in dirs:
        d.write_auth(bus.names)
        (reloaded if d.reload() else idle).append(d)
    return Applied(approval, tuple(reloaded), tuple(idle))
