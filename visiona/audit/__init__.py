"""The audit trail: who did what to which user, device, token, model or deployment."""
