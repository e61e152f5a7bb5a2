"""Schemas of dim's own API (jobs, accounts); OpenAI's are in `gateway.protocol`."""
