"""Read models folded from the event log; each can be rebuilt from zero."""
