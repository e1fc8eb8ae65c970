"""Utilities split by purpose: boxes, nested tensors, distributed, logging, checkpoints."""
