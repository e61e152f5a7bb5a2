"""Inference engines behind one protocol: simulated (no GPU), and later vLLM and OpenAI upstreams."""
