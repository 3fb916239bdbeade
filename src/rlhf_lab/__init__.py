"""rlhf-lab: fine-tune language models from human and AI feedback, one DVC stage at a time."""

__version__ = "0.1.0"
