"""The worker: pulls tasks for its models, drives an engine, streams tokens, reports results."""
