"""zai-proxy: a credential-keeping, rate-learning reverse proxy for LLM APIs."""

from __future__ import annotations

__version__ = "0.1.0"
