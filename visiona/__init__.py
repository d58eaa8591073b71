"""visionA: cloud backend and local agent for Kneron edge-AI USB accelerators."""

__version__ = "0.1.0"
