"""The HTTP gateway (Litestar). Not built yet: the OpenAI-compatible API, auth, jobs API and WebSocket streaming come with the gateway issue."""
