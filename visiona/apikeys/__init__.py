"""API keys of an organisation, for automation (issue 22 item 4)."""
