"""The node registry: node records in the nodes bucket and a live in-memory view of them, and
the keys enrolled for nodes."""
