"""critic training (see issue #4)."""
