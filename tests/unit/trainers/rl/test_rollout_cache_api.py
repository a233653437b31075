"""Sampling drives the model's KV cache through transformers' current API (`cache`), on every architecture.

`past_key_values` is deprecated (a FutureWarning for the argument, a logged warning for the output
attribute) and goes away in transformers 5.40. The cached loop must also sample exactly what a
loop without any cache samples: one full forward pass over prompt and response so far per token,
the same uniforms (drawn up front, one per row and token) and the same inverse-CDF rule.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from tests.unit.trainers.architectures import ARCHITECTURES, CONFIGS, SLIDING, WINDOW
from tests.unit.trainers.trainer_fixtures import tiny
from trainers.models.lora import apply_lora
from trainers.models.tiny import build_tiny_llama
from trainers.rl.rollout import generate, inverse_cdf_sample, left_pad, positions_from_mask, top_p_filter
from trainers.spec.config import LoRAConfig

PAD, BOS, EOS = 256, 257, 258
PROMPTS = [[BOS, 104, 105], [BOS, 97, 98, 99, 65, 66, 67], [BOS], [BOS, 120, 121, 122, 10]]
GROUPED = [PROMPTS[1]] * 3 + [PROMPTS[0]] * 2 + [PROMPTS[3]] * 3  # GRPO: each prompt's completions adjacent
NEW_TOKENS = 12  # prompt + response outgrow the sliding window
VARIANTS = [(arch, False) for arch in ARCHITECTURES] + [(arch, True) for arch in SLIDING]


def build_model(arch: str, sliding: bool) -> torch.nn.Module:
    """The tiny random `arch` model (float32, eval mode), weights fixed by the seed."""
    config = CONFIGS[arch](300, dropout=0.0, sliding=sliding)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = BOS, EOS, PAD
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    return model.eval()


def _models():
    yield pytest.param("builtin:tiny-llama", lambda: tiny()[0], id="builtin-tiny-llama")
    # LoRA wraps the model it is given in place: a model of its own, not the shared cached one.
    yield pytest.param("lora", lambda: apply_lora(build_tiny_llama()[0], LoRAConfig(r=4), task="causal_lm").eval(),
                       id="lora")
    for arch, sliding in VARIANTS:
        name = f"{arch}-sliding" if sliding else arch
        yield pytest.param(name, lambda a=arch, s=sliding: build_model(a, s), id=name)


MODELS = list(_models())


def sample(model, prompts, *, seed=0, temperature=1.0, top_p=1.0):
    return generate(
        model, prompts, pad_token_id=PAD, eos_token_id=EOS, max_new_tokens=NEW_TOKENS, temperature=temperature,
        top_p=top_p, generator=torch.Generator().manual_seed(seed), stop_check_interval=0,
    )  # fmt: skip


@torch.no_grad()
def sample_without_cache(model, prompts, *, seed=0, temperature=1.0, top_p=1.0):
    """`generate`'s sampling rule, recomputing the whole batch from scratch for every token."""
    generator = torch.Generator().manual_seed(seed)
    uniforms = torch.rand((len(prompts), NEW_TOKENS), generator=generator, dtype=torch.float64)  # (B, N) up front
    ids, mask = left_pad(prompts, PAD)  # (B, P)
    finished = torch.zeros(len(prompts), dtype=torch.bool)
    tokens, logprobs = [], []
    for step in range(NEW_TOKENS):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=False)
        scaled = (logits.logits[:, -1] / temperature).float()  # (B, V)
        probs = torch.softmax(top_p_filter(scaled, top_p), dim=-1)
        token = inverse_cdf_sample(probs, uniforms[:, step]).masked_fill(finished, PAD)
        logprobs.append(torch.log_softmax(scaled, -1).gather(1, token.unsqueeze(1)).squeeze(1) * ~finished)
        tokens.append(token)
        finished = finished | (token == EOS)
        ids = torch.cat([ids, token.unsqueeze(1)], dim=1)
        mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
    return torch.stack(tokens, 1), torch.stack(logprobs, 1)


class DeprecationLog(logging.Handler):
    """Keeps what transformers logs about the deprecated cache names (it logs them, once per process)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if "past_key_values" in message or "cache_params" in message:
            self.messages.append(message)


@pytest.mark.parametrize("name,build", MODELS)
def test_sampling_uses_the_cache_api_and_samples_what_a_loop_without_cache_samples(name, build):
    model = build()
    hf_logging.warning_once.cache_clear()  # the output attribute's warning is logged once per process
    log = DeprecationLog()
    library_logger = hf_logging.get_logger("transformers")
    library_logger.addHandler(log)
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning):  # the argument's warning
                warnings.filterwarnings("error", message=r".*(past_key_values|cache_params)", category=category)
            # repeated prompts: one prefill per distinct prompt, its cache rows copied to each completion
            grouped = sample(model, GROUPED, seed=7, temperature=0.7, top_p=0.9)
            distinct = sample(model, PROMPTS, seed=0)
    finally:
        library_logger.removeHandler(log)
    assert log.messages == []

    if "sliding" in name:
        assert max(map(len, PROMPTS)) + NEW_TOKENS > WINDOW  # the window drops keys during decoding
    for rollout, prompts, seed, temperature, top_p in (
        (grouped, GROUPED, 7, 0.7, 0.9),
        (distinct, PROMPTS, 0, 1.0, 1.0),
    ):
        tokens, logprobs = sample_without_cache(model, prompts, seed=seed, temperature=temperature, top_p=top_p)
        width = rollout.response_ids.shape[1]  # trimmed to the longest response
        assert rollout.response_ids.tolist() == tokens[:, :width].tolist()
        torch.testing.assert_close(rollout.logprobs, logprobs[:, :width], rtol=0, atol=1e-5)
