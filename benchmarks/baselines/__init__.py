"""Baselines measured beside target-braze in the same run (run as scripts)."""
