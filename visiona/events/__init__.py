"""The live event stream (``GET /api/v1/events``): committed audit events as Server-Sent Events."""
