"""ftatlas: the front door (settings and CLI)."""
