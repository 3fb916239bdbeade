"""The docstring task: Python functions -> docstrings (Barone & Sennrich, CodeSearchNet, HumanEval).

- :mod:`~rlhf_lab.tasks.docstring.rewards`: the static-analysis and doctest rewards, the
  bad-docstring variants, the Phase-1 gates (its docstring has the rules);
- :mod:`~rlhf_lab.tasks.docstring.rubric`: the judge's rubric;
- :mod:`~rlhf_lab.tasks.docstring.task`: all of it behind the :class:`~rlhf_lab.tasks.base.Task`
  interface (:data:`TASK`).

The rewards' names are re-exported here: ``from rlhf_lab.tasks.docstring import
analyze_function`` reads as the task's vocabulary.
"""

from rlhf_lab.tasks.docstring.rewards import (
    COMPONENTS,
    CONTROL_FLOW_WORDS,
    DEFAULT_WEIGHTS,
    GENERIC_DOCSTRING,
    LENGTH_MAX_WORDS,
    LENGTH_MIN_WORDS,
    LENGTH_ZERO_WORDS,
    MIN_CODE_WORD,
    PARSE_ERRORS,
    PHASE1_GATES,
    FunctionFacts,
    analyze_function,
    bad_docstring_variants,
    bad_docstrings,
    bleu_score,
    carries_examples,
    clean_docstring,
    component_reward,
    control_flow,
    docstring_reward,
    doctest_accounting,
    doctest_counts,
    doctest_score,
    functions_in,
    length_score,
    names_code,
    nothing_to_check,
    param_coverage,
    raises_mention,
    reply_metrics,
    return_mention,
    score_components,
)
from rlhf_lab.tasks.docstring.rubric import RUBRIC
from rlhf_lab.tasks.docstring.task import TASK

__all__ = [
    "COMPONENTS",
    "CONTROL_FLOW_WORDS",
    "DEFAULT_WEIGHTS",
    "GENERIC_DOCSTRING",
    "LENGTH_MAX_WORDS",
    "LENGTH_MIN_WORDS",
    "LENGTH_ZERO_WORDS",
    "MIN_CODE_WORD",
    "PARSE_ERRORS",
    "PHASE1_GATES",
    "RUBRIC",
    "TASK",
    "FunctionFacts",
    "analyze_function",
    "bad_docstring_variants",
    "bad_docstrings",
    "bleu_score",
    "carries_examples",
    "clean_docstring",
    "component_reward",
    "control_flow",
    "docstring_reward",
    "doctest_accounting",
    "doctest_counts",
    "doctest_score",
    "functions_in",
    "length_score",
    "names_code",
    "nothing_to_check",
    "param_coverage",
    "raises_mention",
    "reply_metrics",
    "return_mention",
    "score_components",
]
