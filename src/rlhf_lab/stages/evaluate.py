"""evaluate: not implemented yet (tracked in issue #6).

rlhf-lab evaluate --params params.yaml
"""

from __future__ import annotations

from typing import Any

from rlhf_lab.config import Params
from rlhf_lab.errors import NotImplementedStage


def main(params: Params, **_: Any) -> None:
    raise NotImplementedStage("stage 'evaluate' is not implemented yet (issue #6)")
