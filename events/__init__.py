"""The event contract: envelope, event types, subjects, stream specs and the one NATS adapter."""

# Every event type registers itself on import; load the whole catalogue so any decoder knows
# every type, whichever module a process happened to import first.
from events import accounts as accounts
from events import jobs as jobs
from events import nodes as nodes
from events import work as work
