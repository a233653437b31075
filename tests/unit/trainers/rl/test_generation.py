"""The rollout interface (`trainers.rl.generation`): the backend factory, the hf backend's static cache and
compiled decoding step, when it compiles, and where its compile cache lives."""

import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from tests.unit.trainers.architectures import CONFIGS
from tests.unit.trainers.trainer_fixtures import tiny
from trainers.distributed.ranks import Ranks
from trainers.precision import resolve_compute
from trainers.rl.generation import BACKEND_PARAM, VLLM_MISSING, create_backend
from trainers.rl.generation.compiled import (
    CPU_COMPILE_MIN_DECODE_STEPS,
    default_cache_dir,
    should_compile,
    use_compile_cache,
)
from trainers.rl.generation.hf import HFBackend
from trainers.rl.online import reuses_sampling_logprobs
from trainers.rl.rollout import decode_step, generate
from trainers.rl.static_cache import StaticDecoding, static_cache_into
from trainers.spec.config import GRPOHyperparameters
from trainers.spec.errors import UserError

PAD, BOS, EOS = 256, 257, 258
PROMPTS = [[BOS, 104, 105], [BOS, 97, 98, 99, 65, 66, 67], [BOS], [BOS, 120, 121, 122, 10]]
GROUPED = [PROMPTS[1]] * 3 + [PROMPTS[0]] * 2 + [PROMPTS[3]] * 3  # GRPO: one prefill per distinct prompt
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def sample(model, prompts, **options):
    return generate(model, prompts, pad_token_id=PAD, eos_token_id=EOS, max_new_tokens=12, temperature=0.8,
                    row_seeds=list(range(len(prompts))), **options)  # fmt: skip


def assert_same_rollout(got, expected):
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "ended_with_eos", "response_lengths"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name
    torch.testing.assert_close(got.logprobs, expected.logprobs, rtol=0, atol=1e-5)


def test_vllm_without_the_extra_is_a_user_error_naming_the_field(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, as where it is not installed
    model, tokenizer = tiny()
    hp = GRPOHyperparameters(generation_backend="vllm")
    with pytest.raises(UserError) as raised:
        create_backend(model, tokenizer, compute=resolve_compute(hp, CPU), hp=hp, ranks=Ranks(),
                       base_model="builtin:tiny-llama")  # fmt: skip
    assert (raised.value.message, raised.value.param) == (VLLM_MISSING, BACKEND_PARAM)
    assert VLLM_MISSING == "generation_backend 'vllm' needs the optional vllm extra (pip install -e '.[vllm]')"


def test_the_hf_backend_samples_with_the_training_model_and_its_logprobs_stand_for_pi_old_in_fp32_only():
    model, tokenizer = tiny()
    hp = GRPOHyperparameters()
    backend = create_backend(model, tokenizer, compute=resolve_compute(hp, CPU), hp=hp, ranks=Ranks(),
                             base_model="builtin:tiny-llama")  # fmt: skip
    assert isinstance(backend, HFBackend) and backend.static is None  # a CPU run of unknown length: eager
    assert backend.describe() == "generation backend hf, eager decoding"
    assert reuses_sampling_logprobs(backend, backend.compute)  # fp32 on the CPU
    bf16 = resolve_compute(GRPOHyperparameters(precision="bf16"), CPU)
    assert not reuses_sampling_logprobs(backend, bf16)


@pytest.mark.parametrize("prompts", [PROMPTS, GROUPED], ids=["distinct", "grouped"])
def test_static_cache_decoding_samples_what_the_models_own_cache_samples_whatever_the_stop_check(prompts):
    model = tiny()[0]
    expected = sample(model, prompts, stop_check_interval=1)  # a host synchronisation after every token
    for interval in (0, 4, 16):  # never, every 4 tokens, the default
        static = StaticDecoding(decode_step, length=32)
        assert_same_rollout(sample(model, prompts, static=static, stop_check_interval=interval), expected)


def test_a_sliding_window_model_keeps_its_own_cache_and_samples_the_same():
    config = CONFIGS["mistral"](300, dropout=0.0, sliding=True)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = BOS, EOS, PAD
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
    prefill = model(input_ids=torch.tensor([PROMPTS[1]]), use_cache=True)
    assert static_cache_into(model, prefill.cache, 20) is None
    assert_same_rollout(sample(model, PROMPTS, static=StaticDecoding(decode_step)), sample(model, PROMPTS))


def test_compile_rule_leaves_short_cpu_runs_eager():
    tiny_run = 4 * 16  # 4 rollouts of 16 tokens, as the trainer tests run
    assert not should_compile(None, CPU, planned_decode_steps=tiny_run)
    assert not should_compile(None, CPU, planned_decode_steps=None)
    assert should_compile(None, CPU, planned_decode_steps=CPU_COMPILE_MIN_DECODE_STEPS)
    assert should_compile(None, CUDA, planned_decode_steps=tiny_run)
    assert not should_compile(None, CUDA, planned_decode_steps=tiny_run, distributed=True)
    assert should_compile(True, CPU, planned_decode_steps=1)
    assert not should_compile(False, CUDA, planned_decode_steps=None)

    model, tokenizer = tiny()
    backend = HFBackend.of(model, tokenizer, GRPOHyperparameters(max_new_tokens=16))
    backend.plan(rollouts=4)
    assert backend.static is None


def test_a_step_that_fails_to_compile_falls_back_to_eager_decoding_when_compiling_was_not_asked_for():
    def untraceable(*args, **kwargs):
        raise torch._dynamo.exc.Unsupported("a graph break under fullgraph=True")

    model, tokenizer = tiny()
    options = {"row_seeds": [0, 1, 2, 3], "max_new_tokens": 12, "temperature": 0.8, "top_p": 1.0}
    expected = HFBackend.of(model, tokenizer, GRPOHyperparameters()).sample(PROMPTS, **options)
    for setting in (None, True):
        backend = HFBackend.of(model, tokenizer, GRPOHyperparameters(compile_generation=setting))
        backend.static = StaticDecoding(untraceable, length=32)  # the CPU rule would not compile a short run
        if setting is None:
            assert_same_rollout(backend.sample(PROMPTS, **options), expected)
            assert backend.static is None
        else:  # asked for: the error stands
            with pytest.raises(torch._dynamo.exc.Unsupported):
                backend.sample(PROMPTS, **options)


def test_the_compile_cache_defaults_under_the_users_cache_directory(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as inductor_default

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "rlhf-service" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", inductor_default())  # what importing transformers sets
    assert use_compile_cache() == tmp_path / "rlhf-service" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the operator's choice stays
    assert use_compile_cache() == tmp_path / "mine"


@pytest.mark.trains
def test_compiled_decoding_samples_the_eager_tokens():
    """One compile of the smallest model (1 layer): the same tokens as eager decoding, in two calls of 8
    rows with different prompts (the second replays the first's graph over the same cache)."""
    config = LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, bos_token_id=BOS, eos_token_id=EOS,
                         pad_token_id=PAD)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
    _, tokenizer = tiny()
    hp = GRPOHyperparameters(max_new_tokens=12, temperature=0.8, compile_generation=True)
    compiled = HFBackend.of(model, tokenizer, hp)
    eager = HFBackend.of(model, tokenizer, hp.model_copy(update={"compile_generation": False}))
    assert compiled.static is not None and eager.static is None
    for prompts in (GROUPED, PROMPTS * 2):
        options = {"row_seeds": list(range(len(prompts))), "max_new_tokens": 12, "temperature": 0.8, "top_p": 0.95}
        start = time.perf_counter()
        got = compiled.sample(prompts, **options)
        print(f"compiled sample of {len(prompts)} rows: {time.perf_counter() - start:.1f} s")
        assert_same_rollout(got, eager.sample(prompts, **options))
