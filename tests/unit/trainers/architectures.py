"""Tiny random models of the architectures teams fine-tune, each saved as a `base_model` directory.

Every model is built from its transformers config class (2 layers, hidden 64, head dim 16), with
the library's random initialisation under a fixed seed (the global RNG is left untouched), next to
the byte-level tokenizer of `trainers.models.tiny`, and saved with ``save_pretrained`` so the trainers
load it like any local checkpoint. Variants cover what real checkpoints bring: a tokenizer without
a pad token (Llama-3 style: distinct BOS/EOS; GPT-2 style: one ``<|endoftext|>`` for BOS, EOS and
unknown), a pad token past the embedding rows, dropout left on in the config, and sliding-window
attention shorter than the test sequences (alone, or mixed with global layers as in Gemma).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import processors
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from trainers.models.tiny import CHAT_TEMPLATE, ROLE_TOKENS, byte_level_backend

HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, MLP, CONTEXT = 64, 2, 4, 2, 16, 128, 256
WINDOW = 8  # shorter than every test's prompt + completion
INIT_SEED = 0

ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "gpt2", "gpt_neox", "opt")
# Tokenizer styles: "pad" (distinct pad, bos, eos), "pad_last" (the same, the pad token last, after
# the role tokens), "llama3" (bos and eos, no pad), "gpt2" (one <|endoftext|> token for bos, eos and
# unknown; no pad).
TOKENIZER_STYLES = ("pad", "pad_last", "llama3", "gpt2")


def build_tokenizer(style: str = "pad") -> PreTrainedTokenizerFast:
    """The byte-level tokenizer of `trainers.models.tiny` (256 byte tokens, no merges), in one of `TOKENIZER_STYLES`."""
    if style in ("pad", "pad_last"):
        pad, bos, eos = "<pad>", "<s>", "</s>"
    elif style == "llama3":
        pad, bos, eos = None, "<|begin_of_text|>", "<|eot_id|>"
    elif style == "gpt2":
        pad, bos, eos = None, "<|endoftext|>", "<|endoftext|>"
    else:
        raise ValueError(f"unknown tokenizer style {style!r}")
    specials = list(dict.fromkeys([t for t in (pad, bos, eos) if t is not None]))
    if style == "pad_last":  # the pad token is the last id, after the role tokens
        specials = [bos, eos, *ROLE_TOKENS, pad]
    else:
        specials += ROLE_TOKENS
    backend = byte_level_backend()
    backend.add_special_tokens(specials)
    extra = {}
    if style == "gpt2":  # GPT-2 prepends nothing and uses its one special token as unknown too
        extra["unk_token"] = eos
    else:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        extra_special_tokens=ROLE_TOKENS,
        chat_template=CHAT_TEMPLATE,
        add_bos_token=style != "gpt2",
        model_max_length=CONTEXT,
        **extra,
    )


def _llama_like(cls: type[PretrainedConfig], **extra) -> Callable[..., PretrainedConfig]:
    def config(vocab: int, *, dropout: float, sliding: bool, **ids) -> PretrainedConfig:
        return cls(
            vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CONTEXT,
            attention_dropout=dropout, tie_word_embeddings=False, **extra, **ids,
        )  # fmt: skip

    return config


def _llama(vocab: int, *, dropout: float, sliding: bool, **ids) -> PretrainedConfig:
    return _llama_like(LlamaConfig, head_dim=HEAD_DIM)(vocab, dropout=dropout, sliding=sliding, **ids)


def _qwen2(vocab: int, *, dropout: float, sliding: bool, **ids) -> PretrainedConfig:
    window = {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 0} if sliding else {}
    return _llama_like(Qwen2Config, **window)(vocab, dropout=dropout, sliding=sliding, **ids)


def _qwen3(vocab: int, *, dropout: float, sliding: bool, **ids) -> PretrainedConfig:
    return _llama_like(Qwen3Config, head_dim=HEAD_DIM)(vocab, dropout=dropout, sliding=sliding, **ids)


def _mistral(vocab: int, *, dropout: float, sliding: bool, **ids) -> PretrainedConfig:
    config = _llama_like(MistralConfig, head_dim=HEAD_DIM, sliding_window=WINDOW if sliding else None)
    return config(vocab, dropout=dropout, sliding=sliding, **ids)


def _gemma(cls: type[PretrainedConfig]) -> Callable[..., PretrainedConfig]:
    def config(vocab: int, *, dropout: float, sliding: bool, **ids) -> PretrainedConfig:
        # Gemma alternates local (sliding) and global layers; without `sliding` the window is the context.
        return _llama_like(
            cls, head_dim=HEAD_DIM, sliding_window=WINDOW if sliding else CONTEXT,
            layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=HEAD_DIM,
        )(vocab, dropout=dropout, sliding=sliding, **ids)  # fmt: skip

    return config


def _phi3(vocab: int, *, dropout: float, sliding: bool, **ids) -> PretrainedConfig:
    return Phi3Config(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CONTEXT,
        original_max_position_embeddings=CONTEXT, attention_dropout=dropout, resid_pdrop=dropout,
        embd_pdrop=dropout, sliding_window=None, tie_word_embeddings=False, **ids,
    )  # fmt: skip


def _gpt2(vocab: int, *, dropout: float, sliding: bool, **ids) -> PretrainedConfig:
    return GPT2Config(
        vocab_size=vocab, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=CONTEXT,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, **ids,
    )  # fmt: skip


def _gpt_neox(vocab: int, *, dropout: float, sliding: bool, **ids) -> PretrainedConfig:
    return GPTNeoXConfig(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, max_position_embeddings=CONTEXT, attention_dropout=dropout,
        hidden_dropout=dropout, tie_word_embeddings=False, **ids,
    )  # fmt: skip


def _opt(vocab: int, *, dropout: float, sliding: bool, **ids) -> PretrainedConfig:
    return OPTConfig(
        vocab_size=vocab, hidden_size=HIDDEN, ffn_dim=MLP, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        max_position_embeddings=CONTEXT, word_embed_proj_dim=HIDDEN, dropout=dropout, attention_dropout=dropout, **ids,
    )  # fmt: skip


CONFIGS: dict[str, Callable[..., PretrainedConfig]] = {
    "llama": _llama, "qwen2": _qwen2, "qwen3": _qwen3, "mistral": _mistral, "gemma2": _gemma(Gemma2Config),
    "gemma3": _gemma(Gemma3TextConfig), "phi3": _phi3, "gpt2": _gpt2, "gpt_neox": _gpt_neox, "opt": _opt,
}  # fmt: skip
SLIDING = ("mistral", "qwen2", "gemma2", "gemma3")  # architectures with a sliding-window variant
DROPOUT = ("gpt2", "opt")  # architectures whose stock configs keep dropout 0.1


def build(
    arch: str,
    directory: Path,
    *,
    tokenizer: str = "pad",
    dropout: float = 0.0,
    sliding: bool = False,
    missing_rows: int = 0,
) -> Path:
    """Build the tiny random `arch` model and its tokenizer and save both into `directory`.

    Args:
        arch: one of `ARCHITECTURES`.
        directory: where ``save_pretrained`` writes the model and tokenizer (created).
        tokenizer: one of `TOKENIZER_STYLES`.
        dropout: the config's dropout probabilities (attention, residual, embedding where present).
        sliding: a sliding window of `WINDOW` tokens (every layer, or Gemma's local layers).
        missing_rows: the embedding has this many rows fewer than the tokenizer has tokens (the
            last added tokens have none), as in checkpoints whose tokenizer outgrew the model.

    Returns:
        `directory`, usable as a job's ``base_model``.
    """
    if sliding and arch not in SLIDING:
        raise ValueError(f"{arch} has no sliding-window variant")
    directory.mkdir(parents=True, exist_ok=True)
    # AutoTokenizer picks the tokenizer class from the model type (Qwen2's adds an <|endoftext|>
    # unknown token), so the vocabulary is sized from the tokenizer as it reloads.
    CONFIGS[arch](1, dropout=dropout, sliding=sliding).save_pretrained(directory)
    build_tokenizer(tokenizer).save_pretrained(directory)
    tok = AutoTokenizer.from_pretrained(directory)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    rows = len(tok) - missing_rows
    if tok.pad_token_id is not None and tok.pad_token_id >= rows:  # the config cannot name it
        ids["pad_token_id"] = None
    config = CONFIGS[arch](rows, dropout=dropout, sliding=sliding, **ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        model = AutoModelForCausalLM.from_config(config)
    model.eval().save_pretrained(directory)
    return directory
