"""PPO for language models: pure math (core) and the trainer."""
