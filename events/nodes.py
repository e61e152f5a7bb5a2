"""Node lifecycle events, stored in the NODES stream on ``NS.nodes.<node_id>.<type>``.

The node record in the nodes bucket is the live state; these are the history: when a node
joined, left on its own, or was lost (its heartbeats stopped).
"""

from __future__ import annotations

from datetime import datetime

from events.envelope import Event, event_type


@event_type
class NodeJoined(Event):
    """A worker announced its node, engine loaded and healthy."""

    type = "node.joined"
    node_id: str
    models: tuple[str, ...]
    engine: str
    capacity: int
    dim_version: str


@event_type
class NodeLeft(Event):
    """A worker drained and removed its node record."""

    type = "node.left"
    node_id: str
    tasks_completed: int = 0


@event_type
class NodeLost(Event):
    """A node stopped heartbeating: it left selection and its unfinished tasks are moved."""

    type = "node.lost"
    node_id: str
    last_heartbeat_at: datetime
    in_flight: int = 0
