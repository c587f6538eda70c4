"""Serving a world model: an OpenAI-compatible endpoint (`lwm serve`) and WorldModelEnv."""
