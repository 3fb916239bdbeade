"""The docstring task: Python functions -> docstrings (Barone & Sennrich, CodeSearchNet, HumanEval).

- :mod:`~rlhf_lab.tasks.docstring.analysis`: the facts about a function read from its ``ast``;
- :mod:`~rlhf_lab.tasks.docstring.rewards`: the static-analysis and doctest rewards, the
  Phase-1 gates (its docstring has the rules);
- :mod:`~rlhf_lab.tasks.docstring.variants`: the bad docstrings of the discrimination check;
- :mod:`~rlhf_lab.tasks.docstring.formats`: the ``docstring`` and ``humaneval`` row formats;
- :mod:`~rlhf_lab.tasks.docstring.rubric`: the judge's rubric;
- :mod:`~rlhf_lab.tasks.docstring.task`: all of it behind the :class:`~rlhf_lab.tasks.base.Task`
  interface (:data:`TASK`).

The rewards' names are re-exported here: ``from rlhf_lab.tasks.docstring import
analyze_function`` reads as the task's vocabulary.
"""

from rlhf_lab.tasks.docstring.analysis import (
    MIN_CODE_WORD,
    PARSE_ERRORS,
    FunctionFacts,
    analyze_function,
    functions_in,
)
from rlhf_lab.tasks.docstring.rewards import (
    COMPONENTS,
    CONTROL_FLOW_WORDS,
    DEFAULT_WEIGHTS,
    LENGTH_MAX_WORDS,
    LENGTH_MIN_WORDS,
    LENGTH_ZERO_WORDS,
    PHASE1_GATES,
    bleu_score,
    carries_examples,
    clean_docstring,
    component_reward,
    control_flow,
    docstring_reward,
    doctest_accounting,
    doctest_counts,
    doctest_score,
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
from rlhf_lab.tasks.docstring.variants import (
    GENERIC_DOCSTRING,
    bad_docstring_variants,
    bad_docstrings,
)

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
