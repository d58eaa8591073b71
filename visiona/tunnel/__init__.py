"""The server side of the agent tunnel: the live-tunnel hub, status batching, the HTTP proxy."""
