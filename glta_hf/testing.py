"""Tiny, fully offline backbones for tests and examples: a random LLaMA and a byte-level BPE tokenizer.

Both build in well under a second and need no download, so every test of the model and the training loop runs
on the same code path as SmolLM2 or Llama-2, only smaller.
"""
from __future__ import annotations

import functools
from typing import Tuple

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Recommend the next movies for this user. The user has watched these movies and liked them.",
    "Toy Story (1995); genres: Animation, Children's, Comedy. Heat (1995); genres: Action, Crime, Thriller.",
    "Put the item tokens in the order of the descriptions below. Profile: likes dramas. Prediction: will enjoy comedies.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 ()[];:,.!?'\"-_/&|+=<>#%*@",
]


@functools.lru_cache(maxsize=None)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer (any text encodes) with a ChatML chat template and pad = eos."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llama_config(vocab_size: int = 384, hidden_size: int = 32, num_layers: int = 2, initializer_range: float = 0.2):
    """A 2-layer LLaMA config.

    ``initializer_range`` is 0.2, not LLaMA's 0.02: at 0.02 a random tiny model's attention is uniform and its value /
    output projections nearly zero, so (pre-norm) no token can influence another's hidden state and a test of the
    ``<user>`` -> slot signal path cannot pass however GLTA is written. At 0.2 the random attention mixes tokens,
    as a pretrained LLM's does.
    """
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
    )


def tiny_llama(seed: int = 0, **config_kwargs) -> Tuple["transformers.PreTrainedModel", "transformers.PreTrainedTokenizerBase"]:  # noqa: F821
    """A random ``LlamaForCausalLM`` and its tokenizer; deterministic for a given seed."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = tiny_tokenizer(config_kwargs.get("vocab_size", 384))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**config_kwargs)).eval()
    return model, tokenizer


def frozen_tiny_decoder(seed: int = 0):
    """The decoder (``LlamaModel``) of :func:`tiny_llama` with every weight frozen: what a prefix cache may serve."""
    causal, _ = tiny_llama(seed=seed)
    return causal.model.requires_grad_(False)
