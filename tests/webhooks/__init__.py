"""Webhook delivery: SSRF guard, sender, queue, dispatcher (issue 25)."""
