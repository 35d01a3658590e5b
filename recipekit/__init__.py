"""Shared plumbing for the recipes: config, data, models, checkpoints, preemption, outputs."""
