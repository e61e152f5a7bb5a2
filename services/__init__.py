"""The job core, the processes and what they share: `jobs` (the pure job domain), `registry`
(the live node view and selection), the `orchestrator`, `worker` and `projector` processes,
`engines`, settings, and the `dim` command (`cli`, the composition root). See
docs/architecture.md."""
