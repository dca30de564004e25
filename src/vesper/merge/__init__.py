"""Deterministic merge: per-property multi-value registers resolved by (HLC, branch id)."""
