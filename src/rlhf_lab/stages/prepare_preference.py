"""prepare_preference: not implemented yet (tracked in issue #3).

rlhf-lab prepare_preference --params params.yaml
"""

from __future__ import annotations

from typing import Any

from rlhf_lab.config import Params
from rlhf_lab.errors import NotImplementedStage


def main(params: Params, **_: Any) -> None:
    raise NotImplementedStage("stage 'prepare_preference' is not implemented yet (issue #3)")
