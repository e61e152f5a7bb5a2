"""The HTTP gateway, a Litestar app (`app.create_app`): the OpenAI-compatible API, the jobs API,
WebSocket streaming, authentication and rate limits. It plans plain jobs at the door with the
job core (`services.jobs`); see docs/api.md and docs/architecture.md."""
