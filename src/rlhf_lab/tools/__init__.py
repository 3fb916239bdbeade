"""Commands that are not DVC stages: ``generate`` (sample from trained models) and
``analyze_rewards`` (the reward-discrimination check). They read what stages wrote and write
only where they are told; ``rlhf_lab.stages`` holds the DVC stages alone."""
