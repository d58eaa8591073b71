"""Signed webhooks: endpoints of an organisation (API, CLI, console) and their delivery."""
