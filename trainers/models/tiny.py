"""`builtin:tiny-llama`: a small, randomly initialised Llama and a byte-level tokenizer, built in code.

For demos, tests and offline use. The weights depend on nothing but this file: they are drawn from
a private seeded generator (the global RNG is left untouched), so every build is identical. The
tokenizer is a plain `tokenizers` byte-level tokenizer (256 byte tokens, no merges, a few special
tokens) with a Jinja chat template; `save_pretrained` writes files any `AutoTokenizer` loads.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TINY_LLAMA = "tiny-llama"

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [PAD, BOS, EOS, *ROLE_TOKENS]  # ids 256, 257, ... after the 256 bytes

# Every turn is `<|role|>\n{content}</s>`, so an assistant response is its content followed by EOS,
# exactly what the preference data appends; a generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

INIT_SEED = 0
INIT_STD = 0.02


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map, which the ByteLevel pre-tokenizer uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    shift = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + shift)
            shift += 1
    return {byte: chr(char) for byte, char in zip(printable, chars, strict=True)}


def byte_level_backend() -> Tokenizer:
    """A `tokenizers` byte-level BPE without merges: token id b (0 ≤ b < 256) is byte b.

    The base of `build_tokenizer`, and of tokenizers in other styles built on the same 256 bytes;
    the caller adds its special tokens (ids from 256 on) and any post-processor.

    Returns:
        The tokenizer with its ByteLevel pre-tokenizer and decoder, and no special token yet.
    """
    byte_chars = _bytes_to_unicode()
    backend = Tokenizer(models.BPE(vocab={byte_chars[b]: b for b in range(256)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the byte-level tokenizer of `builtin:tiny-llama`.

    Token id b (0 ≤ b < 256) is byte b; the special tokens follow (pad 256, bos 257, eos 258,
    then the chat role tokens). Encoding with special tokens prepends BOS.

    Returns:
        A fast tokenizer with distinct pad, bos and eos tokens and a chat template.
    """
    backend = byte_level_backend()
    backend.add_special_tokens(SPECIAL_TOKENS)
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=ROLE_TOKENS,
        chat_template=CHAT_TEMPLATE,
        add_bos_token=True,
        model_max_length=1024,
    )


def build_model_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """The architecture of `builtin:tiny-llama` (about 0.1M parameters).

    Args:
        tokenizer: the tokenizer from `build_tokenizer`, for vocabulary size and special ids.

    Returns:
        A 2-layer Llama config: hidden 64, 4 heads (2 key/value heads), MLP 128, context 1024.
    """
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_tiny_llama() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Build `builtin:tiny-llama`: the same weights on every call, whatever the global RNG state.

    Matrices are drawn from N(0, 0.02²) by a generator seeded with `INIT_SEED`, in parameter
    order; norm weights are 1. The global RNG is forked while the model is constructed, so
    building it does not change what later random draws produce.

    Returns:
        The model (float32, CPU, train mode off) and its tokenizer.
    """
    tokenizer = build_tokenizer()
    config = build_model_config(tokenizer)
    with torch.random.fork_rng(devices=[]):  # construction runs the library's own random init
        model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(INIT_SEED)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.dim() >= 2:  # embeddings and projections
                param.normal_(0.0, INIT_STD, generator=generator)
            else:  # RMSNorm weights
                param.fill_(1.0)
    model.eval()
    return model, tokenizer
