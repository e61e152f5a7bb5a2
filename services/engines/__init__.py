"""Inference engines behind one protocol: simulated (no GPU), openai (any OpenAI-compatible
server upstream) and vllm (a model served in-process). See docs/engines.md."""
