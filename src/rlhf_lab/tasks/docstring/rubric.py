"""The docstring task's judge rubric: accuracy and completeness against the function source."""

from rlhf_lab.tasks.rubric import Dimension, Rubric

RUBRIC = Rubric(
    context_label="Python function",
    reply_label="Docstring written for it",
    reply_noun="docstring",
    dimensions=(
        Dimension(
            "accuracy",
            "How accurate is the docstring: does it describe what the code actually does, "
            "without false claims?",
            "wrong or unrelated to the code",
            "every statement is true of the code",
        ),
        Dimension(
            "completeness",
            "How complete is the docstring: does it cover the purpose, the parameters, the "
            "return value and the errors raised?",
            "says almost nothing useful",
            "covers purpose, parameters, return value and errors",
        ),
    ),
)
