"""Coordination: the per-run object every run-scoped RPC goes through, and its update policies."""
