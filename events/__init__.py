"""The event contract: envelope, event types, subjects, stream specs and the one NATS adapter."""
