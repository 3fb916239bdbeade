"""The PPO model: ONE frozen base (models/sft), two LoRA adapters and a scalar value head.

    policy     = base + LoRA adapter "policy"   (fresh, B = 0: equals the reference at step 0)
    reference  = base with every adapter disabled (peft ``disable_adapter()``)
    critic     = base + LoRA adapter "critic" + value head (warm-started by ``train_critic``)

With ``critic.shared_trunk: true`` there is no critic adapter: the value head reads the policy's
own final hidden states, as lm-human-preferences' ``scalar_heads=['value']`` and TRL's original
``AutoModelForCausalLMWithValueHead`` do, so :meth:`PolicyCritic.logprobs_and_values` gets
log-probs and values from one backbone pass (and one backward serves both losses). Only the
value head is loaded from ``models/critic``; it must have been fitted on the frozen base's
features (``critic.epochs: 0``), which are exactly the policy's at step 0 (its LoRA B = 0).

The critic-free estimators (``ppo.advantage`` grpo / dr_grpo / rloo / reinforce_pp) load no
critic at all: no ``critic`` adapter, no value head, ``models/critic`` never read
(``critic_dir=None``). Which of the three layouts a model has is
:class:`rlhf_lab.config.CriticLayout` (:attr:`PolicyCritic.layout`), chosen once from params.

One copy of the base weights serves all three, so PPO needs the memory of one model plus two
small adapters (TRL's PPOTrainer holds four full models: policy, reference, value, reward).

Sequence layout used everywhere (rollouts, updates, critic training)::

    [ query (left-padded to P) | response (right-padded to R, EOS included in the mask) ]

The logits/hidden states at positions ``P-1 .. P+R-2`` are the ones that produce response
tokens ``0 .. R-1``: logprobs, entropies and values are all ``[B, R]`` on that slice, with the
response mask as the padding mask ([N-details] "padding": the reference implementations
left-pad queries and right-pad responses the same way). Only those ``R`` positions go through
the LM head (``logits_to_keep``), never the prompt: the head is a large share of a small model's
FLOPs, and prompts are much longer than replies.

peft and several adapters: ``set_adapter`` / ``disable_adapter`` flip ``requires_grad`` of the
adapters they deactivate. PPO trains both adapters with one optimiser, so every switch here goes
through :meth:`PolicyCritic.adapter` / :meth:`PolicyCritic.reference`, which switch and then make
all adapter weights trainable again (``tests/test_ppo_model.py`` checks both adapters change).

Critic directory format (``models/critic``, written by :func:`save_critic`)::

    adapter/adapter_config.json        peft LoraConfig of the critic adapter
    adapter/adapter_model.safetensors  peft adapter weights (standard peft format)
    value_head.safetensors             {"weight": [1, hidden], "bias": [1]} (float32)
    critic.json                        format, hidden size, score normalisation, lora, ...
    provenance.json                    what made it (rlhf_lab.models.write_provenance)

This module stays whole: the critic layouts, the directory format above and the functions that
save and load it change together; a reader checks one against the others.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessor

from rlhf_lab import models, precision
from rlhf_lab.config import CriticLayout, LoraConfig
from rlhf_lab.errors import ModelSourceError
from rlhf_lab.generation import chat_prompt_text, head_logits, next_token_hidden
from rlhf_lab.ppo.core import entropy_from_logits, logprobs_from_logits
from rlhf_lab.precision import full_precision
from rlhf_lab.tokens import default_device, eos_token_ids, position_ids, sampling_kwargs

POLICY = "policy"
CRITIC = "critic"
ADAPTER_DIR = "adapter"
VALUE_HEAD_FILE = "value_head.safetensors"
CRITIC_JSON = "critic.json"
CRITIC_FORMAT = 1

Messages = Sequence[Mapping[str, str]]


# ---------------------------------------------------------------------------------------------
# prompts and padding
# ---------------------------------------------------------------------------------------------


def chat_prompt_ids(
    tok: Any, messages: Messages, system_prompt: str | None, max_length: int
) -> list[int]:
    """Token ids of a chat prompt of at most ``max_length`` tokens.

    Too long: drop the oldest turns first (keeping a user turn first, which some templates
    require), and only if the last turn alone is still too long cut tokens from the left — the
    most recent context is what the reply answers.
    """
    msgs = list(messages)
    while True:
        text = chat_prompt_text(tok, msgs, system_prompt)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_length or len(msgs) <= 1:
            return ids[-max_length:]
        msgs = msgs[1:]
        while len(msgs) > 1 and msgs[0].get("role") != "user":
            msgs = msgs[1:]


def truncate_after_eos(
    response: torch.Tensor, eos_ids: int | Sequence[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sampled tokens → ``(response, mask, eos_found)`` with everything after the first EOS
    (any of ``eos_ids``) replaced by ``pad_id`` and masked out; the EOS itself stays in the mask
    (it is an action the policy took, and the score is credited to it). Trailing all-pad
    columns are dropped.
    """
    eos = torch.as_tensor([eos_ids] if isinstance(eos_ids, int) else list(eos_ids))
    is_eos = torch.isin(response, eos.to(response.device))
    # 1 up to and including the first EOS: the number of EOS strictly before t is 0.
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    mask = (before == 0).long()
    eos_found = is_eos.any(dim=1)
    response = torch.where(mask.bool(), response, torch.full_like(response, pad_id))
    width = int(mask.sum(dim=1).max()) if mask.numel() else 0
    return response[:, :width], mask[:, :width], eos_found


def trim_batch(
    query: torch.Tensor,
    query_mask: torch.Tensor,
    response: torch.Tensor,
    response_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop query columns that are padding in every row (left) and response columns likewise
    (right). Positions come from the mask, so the result computes exactly the same values."""
    used = query_mask.bool().any(dim=0).nonzero()
    first = int(used.min()) if used.numel() else query.shape[1]
    width = int(response_mask.sum(dim=1).max()) if response_mask.numel() else 0
    return query[:, first:], query_mask[:, first:], response[:, :width], response_mask[:, :width]


# ---------------------------------------------------------------------------------------------
# value head
# ---------------------------------------------------------------------------------------------


class ValueHead(nn.Module):
    """A scalar linear head on the final hidden state, kept in float32 whatever the base dtype.

    Initialised N(0, 1/sqrt(hidden + 1)) with zero bias, as lm-human-preferences' value head
    (``init_scale``) and TRL's ``layer_init(std=1/np.sqrt(hidden + 1))``.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.linear.weight, std=1.0 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        save_file(
            {
                "weight": self.linear.weight.detach().float().cpu().contiguous(),
                "bias": self.linear.bias.detach().float().cpu().contiguous(),
            },
            str(path),
        )

    def load(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(path))
        if tuple(state["weight"].shape) != tuple(self.linear.weight.shape):
            raise ModelSourceError(
                f"{path}: value head has shape {tuple(state['weight'].shape)}, the base model "
                f"needs {tuple(self.linear.weight.shape)} (critic trained on another base?)"
            )
        with torch.no_grad():
            self.linear.weight.copy_(state["weight"])
            self.linear.bias.copy_(state["bias"])


# ---------------------------------------------------------------------------------------------
# log-probs of the sampling pass
# ---------------------------------------------------------------------------------------------


class SampledLogprobs(LogitsProcessor):
    """Records the log-prob and entropy of each sampled token from the sampling pass itself.

    A logits processor that returns the scores untouched. transformers applies user processors
    before the sampling warpers (``GenerationMixin._get_logits_processor``), so it sees the
    float32 logits of the step and divides them by the temperature exactly as
    ``TemperatureLogitsWarper`` does; the token drawn from them shows up as the last column of
    ``input_ids`` at the next step (the last one in :meth:`finish`). The values are those of
    :meth:`PolicyCritic.policy_logprobs` (the same core functions on the same scaled logits)
    up to the float rounding of a cached decode against a full-sequence pass; with bf16
    sampling the logits themselves differ, so callers use it in float32 only.
    """

    def __init__(self) -> None:
        self.reset(1.0)

    def reset(self, temperature: float) -> None:
        self.temperature = float(temperature)
        self._last: torch.Tensor | None = None
        self._logprobs: list[torch.Tensor] = []
        self._entropy: list[torch.Tensor] = []
        self.logprobs: torch.Tensor | None = None
        """[B, steps] log-probs of the sampled tokens (after :meth:`finish`)."""
        self.entropy: torch.Tensor | None = None
        """[B, steps] entropy of each step's temperature-scaled distribution."""

    def _take(self, tokens: torch.Tensor) -> None:
        assert self._last is not None
        z = self._last.unsqueeze(1)
        tokens = tokens.to(z.device).unsqueeze(1)
        self._logprobs.append(logprobs_from_logits(z, tokens).squeeze(1).cpu())
        self._entropy.append(entropy_from_logits(z).squeeze(1).cpu())
        self._last = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._last is not None:
            self._take(input_ids[:, -1])
        self._last = scores.float() / self.temperature
        return scores

    def finish(self, response: torch.Tensor) -> None:
        """Close the record with the sampled ``response`` [B, steps] (prompt cut off)."""
        steps = response.shape[1]
        if self._last is not None and len(self._logprobs) < steps:
            self._take(response[:, len(self._logprobs)])
        self._last = None
        # Steps beyond the response (transformers may undo a deferred last step) are dropped.
        self.logprobs = torch.stack(self._logprobs[:steps], dim=1)
        self.entropy = torch.stack(self._entropy[:steps], dim=1)


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------


class PolicyCritic(nn.Module):
    """A frozen causal LM with named LoRA adapters (``policy`` and/or ``critic``) + value head.

    ``layout`` (:class:`rlhf_lab.config.CriticLayout`, chosen once from params) says where the
    values come from: the ``critic`` adapter's hidden states (separate), the ``policy``
    adapter's (shared trunk), or nowhere (none: no value head). Build it with
    :func:`load_policy_critic` (PPO) or :func:`new_critic` (critic training).
    The module stays in eval mode: dropout off, so the PPO ratio is exactly 1 on the first
    minibatch ([N-details] "disable dropout"; lm-human-preferences and TRL do the same).
    """

    def __init__(
        self,
        peft_model: Any,
        value_head: ValueHead | None,
        tok: Any,
        temperature: float = 1.0,
        *,
        layout: CriticLayout,
    ):
        super().__init__()
        self.peft = peft_model
        self.value_head = value_head
        self.tok = tok
        self.temperature = float(temperature)
        self.eos_ids = eos_token_ids(tok, peft_model.base_model.model)
        self.adapter_names: list[str] = list(peft_model.peft_config)
        self._adapter_params: dict[str, list[nn.Parameter]] = {}
        for name in self.adapter_names:
            pattern = re.compile(rf"\.lora_\w+\.{re.escape(name)}(\.|$)")
            self._adapter_params[name] = [
                p for n, p in peft_model.named_parameters() if pattern.search(n)
            ]
        has_adapter = CRITIC in self.adapter_names
        if (value_head is not None) != layout.has_critic or has_adapter != (
            layout is CriticLayout.SEPARATE
        ):
            raise ValueError(
                f"a {layout.value} layout needs "
                + {
                    CriticLayout.NONE: "no value head",
                    CriticLayout.SEPARATE: f"a value head and a {CRITIC!r} adapter",
                    CriticLayout.SHARED_TRUNK: f"a value head and no {CRITIC!r} adapter",
                }[layout]
            )
        self.layout = layout
        # The adapter whose hidden states the value head reads: the policy's own when there is
        # no critic adapter (a shared trunk).
        self.value_adapter = CRITIC if layout is CriticLayout.SEPARATE else POLICY
        self._make_trainable()
        self.eval()

    # -- adapters ------------------------------------------------------------------------------

    @property
    def lm(self) -> Any:
        """The causal LM with LoRA layers injected (calling it skips PeftModel.forward)."""
        return self.peft.base_model.model

    def _make_trainable(self) -> None:
        # peft's set_adapter/disable_adapter turn requires_grad off for inactive adapters; PPO
        # trains both adapters, so restore it after every switch.
        for params in self._adapter_params.values():
            for p in params:
                p.requires_grad_(True)

    @contextlib.contextmanager
    def adapter(self, name: str) -> Iterator[None]:
        """Run the block with only adapter ``name`` active."""
        if name not in self.adapter_names:
            raise KeyError(f"no adapter {name!r}; this model has {self.adapter_names}")
        self.peft.set_adapter(name)
        self._make_trainable()
        yield

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Run the block on the bare base (the frozen SFT model = the PPO reference)."""
        try:
            with self.peft.disable_adapter():
                yield
        finally:
            self._make_trainable()

    @property
    def has_critic(self) -> bool:
        """False for a policy-only model (critic-free estimators): no critic adapter, no head."""
        return self.layout.has_critic

    @property
    def shared_trunk(self) -> bool:
        """True when the value head reads the policy adapter's hidden states (no critic adapter;
        ``critic.shared_trunk``): one backbone pass gives log-probs and values."""
        return self.layout is CriticLayout.SHARED_TRUNK

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every adapter's LoRA weights, then the value head (the PPO optimiser's params)."""
        out = [p for name in self.adapter_names for p in self._adapter_params[name]]
        return out + (list(self.value_head.parameters()) if self.value_head is not None else [])

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        return list(self._adapter_params[name])

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        """Adapter weights in peft's saved format (keys without the adapter name)."""
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.peft, adapter_name=name)
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def load_adapter_state(self, name: str, state: Mapping[str, torch.Tensor]) -> None:
        """Overwrite adapter ``name``'s weights with a state from :meth:`adapter_state`."""
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.peft, dict(state), adapter_name=name)
        missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if missing:
            raise ModelSourceError(f"adapter {name!r}: unexpected weights {missing[:3]}")
        self._make_trainable()

    # -- forward passes ------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        if self.value_head is None:  # the NONE layout
            return next(self.peft.parameters()).device
        return self.value_head.linear.weight.device

    def _inputs(
        self,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        response: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        dev = self.device
        ids = torch.cat([query, response], dim=1).to(dev)
        mask = torch.cat([query_mask, response_mask], dim=1).to(dev)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask)}

    def _hidden(
        self,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        response: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> torch.Tensor:
        """The active adapter's final hidden states [B, R, H] at the R positions that emit the
        response tokens (rlhf_lab.generation.next_token_hidden): one backbone pass."""
        inputs = self._inputs(query, query_mask, response, response_mask)
        # bf16 backbone where configured, autocast entered per pass (rlhf_lab.precision); the
        # heads run in float32 on its output. Every caller — rollout recompute, reference,
        # update — runs this same pass, so the PPO ratio is 1 at the first minibatch in either
        # precision.
        with precision.training_autocast():
            return next_token_hidden(self.lm, inputs, response.shape[1])

    def _logprobs_from_hidden(
        self,
        hidden: torch.Tensor,
        response: torch.Tensor,
        response_mask: torch.Tensor,
        entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # The float32 LM head on the response positions only (rlhf_lab.generation.head_logits).
        # [N-details] "scale the logits by the sampling temperature": the recomputed logprobs
        # must be those of the distribution the tokens were sampled from.
        logits = head_logits(self.lm, hidden) / self.temperature
        mask = response_mask.to(logits.device).bool()
        logp = logprobs_from_logits(logits, response.to(logits.device))
        logp = torch.where(mask, logp, torch.zeros_like(logp))
        ent = None
        if entropy:
            with torch.no_grad():
                ent = torch.where(mask, entropy_from_logits(logits), torch.zeros_like(logp))
        return logp, ent

    def _values_from_hidden(
        self, hidden: torch.Tensor, response_mask: torch.Tensor
    ) -> torch.Tensor:
        assert self.value_head is not None
        # The head in float32 on the (possibly bf16) backbone's output, as the LM head.
        with full_precision(hidden.device):
            v = self.value_head(hidden.float())
        mask = response_mask.to(v.device).bool()
        return torch.where(mask, v, torch.zeros_like(v))

    def _logprobs(
        self,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        response: torch.Tensor,
        response_mask: torch.Tensor,
        entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = self._hidden(query, query_mask, response, response_mask)
        return self._logprobs_from_hidden(hidden, response, response_mask, entropy)

    def policy_logprobs(
        self,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        response: torch.Tensor,
        response_mask: torch.Tensor,
        entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Policy log-probs of the response tokens [B, R] (0 on padding), and optionally the
        per-token entropy [B, R] (no grad) of the temperature-scaled distribution."""
        with self.adapter(POLICY):
            return self._logprobs(query, query_mask, response, response_mask, entropy)

    @torch.no_grad()
    def ref_logprobs(
        self,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        response: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Reference (adapters disabled) log-probs of the response tokens [B, R]."""
        with self.reference():
            return self._logprobs(query, query_mask, response, response_mask, False)[0]

    def values(
        self,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        response: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Critic values V(s_t) of the states that emit each response token [B, R] (0 on pad),
        on the critic adapter's hidden states (the policy adapter's for a shared trunk)."""
        if self.value_head is None:
            raise RuntimeError("this model has no critic (loaded for a critic-free estimator)")
        # The backbone alone (no LM head): TRL's value model is the same backbone + `score`.
        with self.adapter(self.value_adapter):
            hidden = self._hidden(query, query_mask, response, response_mask)
        return self._values_from_hidden(hidden, response_mask)

    def logprobs_and_values(
        self,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        response: torch.Tensor,
        response_mask: torch.Tensor,
        entropy: bool = False,
        policy_grad: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """:meth:`policy_logprobs` and :meth:`values` of a shared-trunk model from ONE backbone
        pass under the policy adapter: ``(logprobs, entropy or None, values)``, each [B, R].

        ``policy_grad=False`` (critic warm-up): the backbone and LM head run without gradient,
        so a loss on the values trains the value head alone on detached hidden states and the
        policy adapter gets no gradient.
        """
        if self.layout is not CriticLayout.SHARED_TRUNK:
            raise RuntimeError(
                "logprobs_and_values needs a shared-trunk model (critic.shared_trunk): a "
                "separate critic reads its own adapter's hidden states"
            )
        with (
            self.adapter(POLICY),
            torch.set_grad_enabled(torch.is_grad_enabled() and policy_grad),
        ):
            hidden = self._hidden(query, query_mask, response, response_mask)
            logp, ent = self._logprobs_from_hidden(hidden, response, response_mask, entropy)
        return logp, ent, self._values_from_hidden(hidden, response_mask)

    def forward(
        self,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        response: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> torch.Tensor:
        """The critic's values (:meth:`values`): what training the critic alone differentiates,
        so the module can be wrapped by DDP."""
        return self.values(query, query_mask, response, response_mask)

    @torch.no_grad()
    def generate(
        self,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        max_new_tokens: int,
        temperature: float | None = None,
        *,
        group_size: int = 1,
        record: SampledLogprobs | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample replies from the policy → ``(response, response_mask, eos_found)`` on the CPU.

        Pure temperature sampling: every warper the model's generation config could switch on
        (top-k, top-p, min-p, typical-p, repetition penalties...) is set to its neutral value,
        because the PPO ratio assumes the tokens came from ``softmax(logits / T)`` ([N-details]
        "top_k=0, top_p=1.0"; :func:`rlhf_lab.tokens.sampling_kwargs`, as for every sampler).

        ``group_size`` N > 1: the rows come in runs of N copies of one prompt (a GRPO/RLOO
        group); each prompt goes through the prefill once and its N replies continue from
        copies of its KV cache (:meth:`_shared_prompt_cache`). ``record`` collects the sampled
        tokens' log-probs and entropies of the sampling pass itself (:class:`SampledLogprobs`).
        """
        dev = self.device
        temperature = self.temperature if temperature is None else temperature
        kwargs = sampling_kwargs(max_new_tokens, temperature, self.eos_ids, self.tok.pad_token_id)
        if record is not None:
            if temperature <= 0:
                raise ValueError("greedy decoding has no sampling distribution to record")
            record.reset(temperature)
            kwargs["logits_processor"] = [record]
        # bf16 sampling where configured (rlhf_lab.precision): the tokens' log-probs are
        # recomputed (float32 head) before any loss uses them.
        with self.adapter(POLICY), precision.inference():
            if group_size > 1 and query.shape[1] > 1:
                kwargs["past_key_values"] = self._shared_prompt_cache(
                    query.to(dev), query_mask.to(dev), group_size
                )
            out = self.lm.generate(
                input_ids=query.to(dev), attention_mask=query_mask.to(dev), **kwargs
            )
        response = out[:, query.shape[1] :].cpu()
        if record is not None:
            record.finish(response)
        return truncate_after_eos(response, self.eos_ids, self.tok.pad_token_id)

    def _shared_prompt_cache(
        self, query: torch.Tensor, query_mask: torch.Tensor, group_size: int
    ) -> Any:
        """The KV cache of every query token but the last, computed once per group of
        ``group_size`` identical rows and repeated for each of them.

        ``generate`` then runs only the last prompt token and the replies (it feeds the tokens
        the cache does not hold; transformers' "re-use a prompt cache" recipe, which needs at
        least one uncached token). Positions and padding are those ``generate`` would use.
        """
        n = group_size
        if query.shape[0] % n or not (
            torch.equal(query[::n].repeat_interleave(n, 0), query)
            and torch.equal(query_mask[::n].repeat_interleave(n, 0), query_mask)
        ):
            raise ValueError(f"the rows are not runs of {n} copies of one prompt")
        ids, mask = query[::n, :-1], query_mask[::n, :-1]
        out = self.lm.get_decoder()(
            input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=True
        )
        cache = out.past_key_values
        cache.batch_repeat_interleave(n)
        return cache

    # -- export --------------------------------------------------------------------------------

    def merged_policy(self) -> Any:
        """The policy merged into a plain causal LM (for ``models/ppo``).

        Destructive: the base weights absorb the policy adapter and the adapters are removed,
        so this object is unusable afterwards.
        """
        if POLICY not in self.adapter_names:
            raise KeyError("this model has no policy adapter")
        merged = self.peft.merge_and_unload(adapter_names=[POLICY])
        self.adapter_names = []
        return merged


# ---------------------------------------------------------------------------------------------
# building, saving and loading
# ---------------------------------------------------------------------------------------------


def load_base(sft_dir: str | Path, device: torch.device | None = None) -> tuple[Any, Any]:
    """The frozen base (in the dtype ``models/sft`` was saved in) and its left-padded tokenizer."""
    tok = models.load_tokenizer(sft_dir, padding_side="left")
    base = models.load_causal_lm(sft_dir, models.saved_dtype(sft_dir))
    models.ensure_pad_token(tok, base)
    base.requires_grad_(False)
    base.to(device or default_device())
    return base, tok


def new_critic(
    sft_dir: str | Path, lora: LoraConfig, device: torch.device | None = None
) -> PolicyCritic:
    """A fresh critic (adapter ``critic`` at its peft init + a new value head) on the base.

    The LoRA ``B`` matrices start at zero, so the untrained critic sees the base's features.
    Seed torch beforehand for a reproducible head and ``A`` init.
    """
    from peft import get_peft_model

    base, tok = load_base(sft_dir, device)
    peft_model = get_peft_model(base, models.lora_config(lora), adapter_name=CRITIC)
    head = ValueHead(base.config.hidden_size).to(base.device)
    return PolicyCritic(peft_model, head, tok, layout=CriticLayout.SEPARATE)


def read_critic_info(critic_dir: str | Path) -> dict[str, Any]:
    """``critic.json`` of a critic directory, with a clear error when it is not one."""
    path = Path(critic_dir) / CRITIC_JSON
    if not path.is_file():
        raise ModelSourceError(
            f"{critic_dir}: not a critic directory (no {CRITIC_JSON}); run `rlhf-lab train_critic`"
        )
    info = json.loads(path.read_text())
    if info.get("format") != CRITIC_FORMAT:
        raise ModelSourceError(f"{path}: unknown critic format {info.get('format')!r}")
    return info


def check_untrained_adapter(critic_dir: str | Path) -> None:
    """Refuse a critic whose adapter was trained (``critic.epochs`` > 0) for a shared trunk.

    Its value head was fitted on that adapter's features, which the policy does not have; a
    head fitted with the adapter at its init (every LoRA B = 0) read the frozen base's, which
    are exactly the fresh policy's.
    """
    from safetensors.torch import load_file

    path = Path(critic_dir) / ADAPTER_DIR / "adapter_model.safetensors"
    if not path.is_file():
        return  # a shared-trunk checkpoint's critic: a value head alone
    state = load_file(str(path))
    if any(bool(w.any()) for k, w in state.items() if "lora_B" in k):
        raise ModelSourceError(
            f"{critic_dir}: its critic adapter was trained (critic.epochs > 0), so its value "
            "head reads features the policy lacks; critic.shared_trunk needs a critic from "
            "critic.epochs 0 (rerun `rlhf-lab train_critic`)"
        )


def load_policy_critic(
    sft_dir: str | Path,
    critic_dir: str | Path | None,
    policy_lora: LoraConfig,
    temperature: float,
    device: torch.device | None = None,
    shared_trunk: bool = False,
) -> PolicyCritic:
    """The PPO model: the base from ``sft_dir``, a fresh ``policy`` adapter (seed torch first),
    and the ``critic`` adapter + value head saved by :func:`save_critic` in ``critic_dir``;
    ``critic_dir=None`` (critic-free estimators) builds the policy alone. ``shared_trunk``
    (``critic.shared_trunk``) loads the value head alone, on the policy's hidden states (see
    :func:`check_untrained_adapter`); it means nothing without a critic. The layout is
    :meth:`CriticLayout.choose`'s, as ``Params.critic_layout``."""
    from peft import get_peft_model

    layout = CriticLayout.choose(critic=critic_dir is not None, shared_trunk=shared_trunk)
    if critic_dir is not None:
        read_critic_info(critic_dir)
        if layout is CriticLayout.SHARED_TRUNK:
            check_untrained_adapter(critic_dir)
    base, tok = load_base(sft_dir, device)
    peft_model = get_peft_model(base, models.lora_config(policy_lora), adapter_name=POLICY)
    if critic_dir is None:
        return PolicyCritic(peft_model, None, tok, temperature=temperature, layout=layout)
    if layout is CriticLayout.SEPARATE:
        peft_model.load_adapter(
            str(Path(critic_dir) / ADAPTER_DIR), adapter_name=CRITIC, is_trainable=True
        )
    head = ValueHead(base.config.hidden_size)
    head.load(Path(critic_dir) / VALUE_HEAD_FILE)
    head.to(base.device)
    return PolicyCritic(peft_model, head, tok, temperature=temperature, layout=layout)


def save_adapter(model: PolicyCritic, name: str, out_dir: str | Path) -> None:
    """Adapter ``name`` as a standard peft directory (adapter_config.json + safetensors)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.peft.peft_config[name].save_pretrained(str(out))
    save_file(model.adapter_state(name), str(out / "adapter_model.safetensors"))


def load_adapter_dir(model: PolicyCritic, name: str, adapter_dir: str | Path) -> None:
    """Overwrite adapter ``name`` with the weights of a directory from :func:`save_adapter`."""
    from safetensors.torch import load_file

    model.load_adapter_state(name, load_file(str(Path(adapter_dir) / "adapter_model.safetensors")))


def save_critic(model: PolicyCritic, out_dir: str | Path, **info: Any) -> None:
    """Write the critic (adapter + value head + critic.json) in the format PPO loads.

    A shared-trunk model (a PPO checkpoint's) has no critic adapter: the value head alone.
    ``info`` goes into critic.json (score normalisation, max_length, base, ...).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shared = model.layout is CriticLayout.SHARED_TRUNK
    if not shared:
        save_adapter(model, CRITIC, out / ADAPTER_DIR)
    model.value_head.save(out / VALUE_HEAD_FILE)
    meta = {
        "format": CRITIC_FORMAT,
        "adapter_name": None if shared else CRITIC,
        "adapter_dir": None if shared else ADAPTER_DIR,
        # only when set: train_critic's critic.json stays as it was
        **({"shared_trunk": True} if shared else {}),
        "value_head": VALUE_HEAD_FILE,
        "hidden_size": model.value_head.linear.in_features,
        **info,
    }
    (out / CRITIC_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_critic_weights(model: PolicyCritic, critic_dir: str | Path) -> None:
    """Overwrite the critic adapter (none for a shared trunk) and value head of ``model`` from
    a critic directory."""
    if model.layout is CriticLayout.SEPARATE:
        load_adapter_dir(model, CRITIC, Path(critic_dir) / ADAPTER_DIR)
    model.value_head.load(Path(critic_dir) / VALUE_HEAD_FILE)


def export_policy(model: PolicyCritic, out_dir: str | Path, **provenance: Any) -> None:
    """Merge the policy adapter into the base and save a plain causal-LM directory."""
    tok = model.tok
    merged = model.merged_policy()
    merged = merged.to("cpu")
    models.save_model(merged, tok, out_dir)
    models.write_provenance(
        out_dir,
        role="policy",
        parameters=models.parameter_count(merged),
        dtype=str(merged.dtype).removeprefix("torch."),
        pad_token=tok.pad_token,
        eos_token=tok.eos_token,
        **provenance,
    )
