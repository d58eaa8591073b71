"""Demo data for development (``visiona seed-demo``, ``VISIONA_SEED_DEMO_DATA``)."""
