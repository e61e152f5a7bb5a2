"""The job domain, pure and without I/O: the plan of each pattern, what to do next for a job
(`decide`), consensus, templates, the work a task sends, and admission (room for a model)."""
