"""Supervised training loops: reward model, SFT, critic."""
