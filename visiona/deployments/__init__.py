"""Deployments: push a stored model through a device's tunnel to its agent."""
