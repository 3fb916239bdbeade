"""train_sft: not implemented yet (tracked in issue #4).

rlhf-lab train_sft --params params.yaml
"""

from __future__ import annotations

from typing import Any

from rlhf_lab.config import Params
from rlhf_lab.errors import NotImplementedStage


def main(params: Params, **_: Any) -> None:
    raise NotImplementedStage("stage 'train_sft' is not implemented yet (issue #4)")
