"""Data collection for language world models: sandboxed environments, policies, the runner."""
