"""Task-specific data and reward rules (chat, crs, docstring)."""
