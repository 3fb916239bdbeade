"""sft training (see issue #4)."""
