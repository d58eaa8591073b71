"""Several server nodes behind one address: the tunnel registry, forwarding, revocation.

Off unless ``VISIONA_INTERNAL_TOKEN`` and ``VISIONA_REDIS_URL`` are set; a single node
behaves exactly as without this package. See docs/operations.md ("Running a cluster").
"""
