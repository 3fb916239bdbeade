"""The chat task: preference-tuned multi-turn dialogue (HH-RLHF, chitchat, TRL formats).

Chat has no rule rewards of its own (the ``text/*`` ones apply to every task), no catalogue and
no protocol gates; what is its own is the judge's rubric (:data:`RUBRIC`).
"""

from rlhf_lab.tasks.chat.rubric import RUBRIC

__all__ = ["RUBRIC"]
