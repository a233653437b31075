"""Resolve a `base_model` reference to a causal LM and its tokenizer."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from peft import PeftConfig
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from trainers.models.lora import base_of, is_adapter_dir, load_merged
from trainers.models.tiny import TINY_LLAMA, build_tiny_llama
from trainers.spec.errors import ModelNotFoundError, UserError

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = (TINY_LLAMA,)
ADDED_PAD_TOKEN = "<pad>"


def default_device() -> torch.device:
    """The device training runs on: the first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_policy(
    ref: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a reference, with a pad token distinct from EOS.

    References: ``builtin:<name>`` (built in code, see `trainers.models.tiny`), a local directory
    written by ``save_pretrained``, or a Hugging Face hub id. A hub id is read from the local
    cache first; the hub is asked only when the cache misses. A directory holding a LoRA adapter
    (``adapter_config.json``, e.g. a LoRA job's checkpoint) loads as its base model, itself
    resolved by this function from the reference the adapter names, with the adapter merged in;
    so a LoRA checkpoint can be the base model of a new job.

    Args:
        ref: the model reference.
        dtype: floating-point type of the loaded weights.

    Returns:
        The model (on the CPU, eval mode; never a peft wrapper) and its tokenizer. When the tokenizer had no pad token,
        or its pad was EOS, a new pad token is added and the embeddings grow by one row.

    Raises:
        ModelNotFoundError: the reference is unknown or cannot be loaded; the message names it.
    """
    ref = str(ref)
    if ref.startswith(BUILTIN_PREFIX):
        name = ref.removeprefix(BUILTIN_PREFIX)
        if name not in BUILTIN_MODELS:
            known = ", ".join(BUILTIN_PREFIX + m for m in BUILTIN_MODELS)
            raise ModelNotFoundError(f"unknown builtin model {ref!r}; known: {known}")
        model, tokenizer = build_tiny_llama()
        model = model.to(dtype)
    elif is_adapter_dir(ref):
        return load_merged(ref, functools.partial(load_policy, dtype=dtype))  # the base got its pad token
    elif Path(ref).is_dir():
        model, tokenizer = _from_pretrained(ref, dtype=dtype, local_files_only=True)
    else:
        model, tokenizer = _from_hub(ref, dtype=dtype)
    ensure_pad_token(model, tokenizer, ref=ref)
    return model, tokenizer


def stored_dtype(ref: str | Path) -> torch.dtype:
    """The type a model reference's weights are stored in, which its checkpoints keep.

    Args:
        ref: a model reference `load_policy` or `load_reward_model` has loaded (so a hub id is in
            the local cache).

    Returns:
        The ``dtype`` its config records (an adapter's: its base's); float32 for builtin models,
        and for a reference whose config records none or cannot be read.
    """
    ref = str(ref)
    if ref.startswith(BUILTIN_PREFIX):
        return torch.float32
    if is_adapter_dir(ref):
        return stored_dtype(PeftConfig.from_pretrained(ref).base_model_name_or_path)
    try:
        dtype = AutoConfig.from_pretrained(ref, local_files_only=True).dtype
    except (OSError, ValueError, KeyError):
        return torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def _from_hub(ref: str, *, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a hub id from the cache, else download it; any failure names the reference."""
    try:
        return _from_pretrained(ref, dtype=dtype, local_files_only=True)
    except ModelNotFoundError:
        pass
    require_hub_model(ref)
    return _from_pretrained(ref, dtype=dtype, local_files_only=False)


def require_hub_model(ref: str) -> None:
    """Check that the Hugging Face hub has `ref`, before downloading it.

    Asking the hub first fails fast when it is unreachable or the id does not exist, where a
    download attempt would retry for tens of seconds.

    Args:
        ref: a hub model id.

    Raises:
        ModelNotFoundError: the hub cannot be reached or has no such model; the message names `ref`.
    """
    try:
        import huggingface_hub

        huggingface_hub.HfApi().model_info(ref, timeout=10)
    except Exception as exc:  # noqa: BLE001 - network, validation and not-found errors alike
        raise ModelNotFoundError(
            f"model {ref!r} is neither a builtin model, a directory, nor in the local Hugging Face "
            f"cache, and the hub could not provide it: {exc}"
        ) from exc


def _from_pretrained(
    ref: str, *, dtype: torch.dtype, local_files_only: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=local_files_only)
        model = AutoModelForCausalLM.from_pretrained(ref, local_files_only=local_files_only, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotFoundError(f"could not load model {ref!r}: {exc}") from exc
    model.eval()
    return model, tokenizer


def ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, ref: str = "the model") -> None:
    """Give the tokenizer a pad token distinct from EOS, and the model an embedding row for every token id.

    The pad token is the tokenizer's own when it has one that is not EOS; else a special token
    of the tokenizer named as a pad (e.g. Llama 3.1's ``<|finetune_right_pad_id|>``) that already
    has a row; else `ADDED_PAD_TOKEN`, added. When the tokenizer then holds more ids than the
    embedding table has rows (an added pad, a pad the tokenizer class appended, extra tokens), the
    table grows to cover them all: each new row (input and output) is the mean of the existing
    rows, so two loads of the same reference give the same weights. ``config.vocab_size`` follows
    the table, and ``config.pad_token_id`` (and the generation config's, when the model has one:
    sequence-classification models do not) is set, so ``save_pretrained`` writes a checkpoint that
    ``from_pretrained`` loads as it is.

    Args:
        model: the model whose embeddings may grow (in place); a causal LM or a classifier.
        tokenizer: the model's tokenizer (changed in place).
        ref: the model's reference, named in errors.

    Raises:
        UserError: the model has no embedding table that can grow to the tokenizer's size.
    """
    pad = tokenizer.pad_token_id
    if pad is None or pad == tokenizer.eos_token_id:
        named = _named_pad_token(tokenizer, _embedding_rows(model, ref))
        tokenizer.add_special_tokens({"pad_token": named or ADDED_PAD_TOKEN})
    old_rows = _embedding_rows(model, ref)
    if len(tokenizer) > old_rows:
        try:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        except (NotImplementedError, AttributeError, ValueError) as exc:
            raise UserError(
                f"model {ref!r} has {old_rows} embedding rows but its tokenizer {len(tokenizer)} token ids, "
                f"and its embeddings cannot grow: {exc}", param="base_model"
            ) from exc  # fmt: skip
        # The new rows are set to the mean embedding, without the library's random draw, so two
        # loads of the same reference give the same weights. Pad positions are masked anyway.
        with torch.no_grad():
            for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
                if emb is not None and emb.weight.shape[0] > old_rows:
                    emb.weight[old_rows:] = emb.weight[:old_rows].mean(dim=0)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _embedding_rows(model: PreTrainedModel, ref: str) -> int:
    """Rows of `model`'s input embedding table."""
    emb = model.get_input_embeddings()
    if emb is None or getattr(emb, "weight", None) is None:
        raise UserError(f"model {ref!r} has no input embedding table", param="base_model")
    return emb.weight.shape[0]


def _named_pad_token(tokenizer: PreTrainedTokenizerBase, rows: int) -> str | None:
    """A special token of the tokenizer named as a pad, with an embedding row, that is not EOS or BOS; else None."""
    taken = {tokenizer.eos_token_id, tokenizer.bos_token_id}
    for token_id, token in sorted(tokenizer.added_tokens_decoder.items()):
        if token.special and "pad" in token.content.lower() and token_id < rows and token_id not in taken:
            return token.content
    return None


def disable_dropout(model: nn.Module) -> None:
    """Turn off the dropout of `model`'s own layers, in place (TRL's ``disable_dropout``).

    Every `nn.Dropout` gets p = 0, and so does every float attribute of a module whose name holds
    "drop" (``dropout``, ``attention_dropout``, OPT's ``layerdrop``): many architectures pass such
    a probability to a functional dropout rather than hold an `nn.Dropout`. The config is left
    alone, so a saved checkpoint keeps the architecture's dropout. A peft adapter's
    ``lora_dropout`` is kept: it is the job's own LoRA setting.

    Args:
        model: a model, possibly peft-wrapped (changed in place).
    """
    for name, module in model.named_modules():
        if "lora_dropout" in name.split("."):
            continue
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attr, value in list(vars(module).items()):
            if "drop" in attr and isinstance(value, float):
                setattr(module, attr, 0.0)


def accepts_4d_attention_mask(model: nn.Module) -> bool:
    """Whether `model`'s attention takes a custom 4D mask: SDPA and eager attention do, FlashAttention not."""
    inner = base_of(model)
    return getattr(getattr(inner, "config", None), "_attn_implementation", None) in ("sdpa", "eager")


def packs_exactly(model: nn.Module, longest: int) -> bool:
    """Whether packed rows under a custom 4D mask give `model` its own attention on sequences of up to `longest` tokens.

    A custom 4D mask replaces the mask of every layer, sliding ones included, so it states full
    causal attention. That is the model's own attention when every layer is full, or when a
    sequence is no longer than the window (a token sees itself and the ``window − 1`` tokens
    before it, i.e. the whole sequence). Windowed models (Mistral, Phi-3, Qwen2/Qwen3 with
    ``use_sliding_window``, Gemma 2/3's mix of global and sliding layers) therefore run longer
    sequences one row each, as do attention patterns other than full and sliding.

    Args:
        model: the (possibly peft-wrapped) model.
        longest: the longest sequence, prompt plus response, the packed rows would hold.
    """
    if not accepts_4d_attention_mask(model):
        return False
    inner = base_of(model)
    config = inner.config.get_text_config()
    if any(kind not in ("full_attention", "sliding_attention") for kind in getattr(config, "layer_types", None) or ()):
        return False  # chunked, linear or other patterns a causal mask cannot state
    windows = [getattr(config, "sliding_window", None)]
    if "local" in (getattr(config, "attention_layers", None) or ()):  # GPT-Neo's local layers
        windows.append(getattr(config, "window_size", None))
    return all(window is None or longest <= window for window in windows)


def attention_mask_for(model: nn.Module, mask: Tensor) -> Tensor:
    """A boolean (b, 1, W, W) mask as `model`'s attention wants it: as is for SDPA, additive for eager."""
    inner = base_of(model)
    if getattr(inner.config, "_attn_implementation", None) != "eager":
        return mask
    dtype = next(inner.parameters()).dtype
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
