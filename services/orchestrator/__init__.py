"""The orchestrator: turns job events into tasks and advances jobs as task events arrive."""
