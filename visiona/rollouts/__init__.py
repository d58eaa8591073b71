"""Rollouts: one model sent to many devices in batches, under one scheduler lease."""
