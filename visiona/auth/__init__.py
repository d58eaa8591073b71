"""Users, passwords and web sessions."""
