"""reward training (see issue #4)."""
