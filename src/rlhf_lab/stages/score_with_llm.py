"""score_with_llm: not implemented yet (tracked in issue #3).

rlhf-lab score_with_llm --params params.yaml
"""

from __future__ import annotations

from typing import Any

from rlhf_lab.config import Params
from rlhf_lab.errors import NotImplementedStage


def main(params: Params, **_: Any) -> None:
    raise NotImplementedStage("stage 'score_with_llm' is not implemented yet (issue #3)")
