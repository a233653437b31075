"""`trainers.models.chat_generation`: chat completions of builtin:tiny-llama, in process."""

import pytest

from trainers.models.chat_generation import _safe_prefix, cut_at_stop, generate_chat, load_chat_model
from trainers.models.checkpoint import write_model_info
from trainers.models.loading import BUILTIN_MODELS
from trainers.models.reward import load_reward_model
from trainers.spec.errors import UserError
from trainers.spec.generation import BUILTIN_MODEL_REFS, parse_generation_request

MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "say: hi"}]


@pytest.fixture(scope="module")
def chat():
    return load_chat_model("builtin:tiny-llama")


def request(**fields):
    return parse_generation_request({"messages": MESSAGES, **fields})


def texts(result):
    return [c["text"] for c in result["choices"]]


def test_the_builtin_references_are_the_builtin_models():
    assert BUILTIN_MODEL_REFS == tuple(f"builtin:{name}" for name in BUILTIN_MODELS)


def test_the_same_seed_gives_the_same_completions_and_n_gives_distinct_ones(chat):
    first = generate_chat(chat, request(max_tokens=12, seed=7, n=3))
    assert generate_chat(chat, request(max_tokens=12, seed=7, n=3)) == first
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert len(set(texts(first))) == 3  # three samples of a random model over 262 tokens
    assert texts(generate_chat(chat, request(max_tokens=12, seed=8, n=3))) != texts(first)


def test_max_tokens_ends_every_completion_with_finish_reason_length_and_usage_counts_them(chat):
    result = generate_chat(chat, request(max_tokens=5, seed=1, n=2))
    assert [(c["finish_reason"], c["completion_tokens"]) for c in result["choices"]] == [("length", 5)] * 2
    # Byte-level tokens: BOS, each turn `<|role|>` "\n" content EOS, then `<|assistant|>` "\n"; the prompt once.
    prompt = 1 + sum(3 + len(m["content"]) for m in MESSAGES) + 2
    assert result["usage"] == {"prompt_tokens": prompt, "completion_tokens": 10, "total_tokens": prompt + 10}


def test_a_stop_string_ends_the_completion_before_it(chat):
    free = texts(generate_chat(chat, request(max_tokens=40, seed=3)))[0]
    at = next(i for i, ch in enumerate(free) if i >= 3 and ch.isascii() and ch.isprintable())
    stop = free[at]
    result = generate_chat(chat, request(max_tokens=40, seed=3, stop=[stop, "never-produced"]))
    (choice,) = result["choices"]
    assert choice["text"] == free[: free.index(stop)]
    assert choice["finish_reason"] == "stop" and choice["completion_tokens"] < 40


def test_greedy_decoding_ignores_the_seed_and_gives_every_choice_the_same_text(chat):
    one = generate_chat(chat, request(max_tokens=8, temperature=0, seed=1, n=2))
    other = generate_chat(chat, request(max_tokens=8, temperature=0, seed=2, n=2))
    assert one == other and texts(one)[0] == texts(one)[1]
    assert one["usage"]["completion_tokens"] == 16


def test_streamed_deltas_concatenate_to_the_text_without_streaming(chat):
    for fields in ({"max_tokens": 30, "seed": 5, "n": 2}, {"max_tokens": 30, "temperature": 0, "n": 2}):
        plain = generate_chat(chat, request(**fields))
        deltas: dict[int, list[str]] = {}

        def on_delta(index, text, deltas=deltas):
            deltas.setdefault(index, []).append(text)

        streamed = generate_chat(chat, request(**fields), on_delta=on_delta)
        assert streamed == plain
        assert {i: "".join(parts) for i, parts in deltas.items()} == dict(enumerate(texts(plain)))
        assert all(part for parts in deltas.values() for part in parts)  # no empty deltas
    # With a stop string, the stop string itself is never streamed.
    free = texts(generate_chat(chat, request(max_tokens=40, seed=3)))[0]
    stop = free[5:7]
    pieces: list[str] = []
    result = generate_chat(chat, request(max_tokens=40, seed=3, stop=[stop]), on_delta=lambda i, t: pieces.append(t))
    assert "".join(pieces) == texts(result)[0] == free[: free.index(stop)]


def test_should_stop_ends_generation_early(chat):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 3

    result = generate_chat(chat, request(max_tokens=200, seed=1), should_stop=should_stop)
    assert result["choices"][0]["completion_tokens"] == 4
    assert result["choices"][0]["finish_reason"] == "length"


def test_requests_that_cannot_fit_or_are_malformed_name_their_field(chat, tmp_path):
    with pytest.raises(UserError) as err:
        generate_chat(chat, request(max_tokens=chat.context_length))
    assert err.value.param == "max_tokens"
    with pytest.raises(UserError) as err:
        generate_chat(chat, parse_generation_request({"messages": [{"role": "user", "content": "x" * 2000}]}))
    assert err.value.param == "messages"
    for fields, param in [({"temperature": 3}, "temperature"), ({"n": 0}, "n"), ({"stop": [""]}, "stop"),
                          ({"messages": []}, "messages"), ({"messages": [{"role": "tool", "content": "x"}]},
                                                          "messages.0.role")]:
        with pytest.raises(UserError) as err:
            parse_generation_request({"messages": MESSAGES, **fields})
        assert err.value.param == param, fields


def test_a_reward_model_directory_is_refused_as_a_chat_model(tmp_path):
    model, tokenizer = load_reward_model("builtin:tiny-llama")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    write_model_info(tmp_path, {"kind": "reward_model", "adapter": False})
    with pytest.raises(UserError) as err:
        load_chat_model(str(tmp_path))
    assert err.value.param == "model" and "reward model" in err.value.message
    with pytest.raises(UserError) as err:
        load_chat_model("builtin:nothing")
    assert err.value.param == "model"


def test_stop_strings_are_cut_and_held_back_while_they_may_still_complete():
    assert cut_at_stop("abcXYdefXY", ["XY", "de"]) == ("abc", True)
    assert cut_at_stop("abc", ["XY"]) == ("abc", False)
    assert _safe_prefix("hello wo", ["world"]) == "hello "
    assert _safe_prefix("hello w\ufffd", []) == "hello w"
    assert _safe_prefix("hello", ["xyz"]) == "hello"


def test_a_conversation_the_chat_template_refuses_is_a_user_error_about_messages():
    from trainers.models.chat_generation import prompt_ids
    from trainers.models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system turn') }}"
                               "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(UserError) as err:
        prompt_ids(tokenizer, request())
    assert err.value.param == "messages" and "no system turn" in err.value.message


def test_a_lora_adapter_directory_is_served_merged_into_the_base_it_names(chat, tmp_path):
    import json

    import torch

    from trainers.models.lora import apply_lora
    from trainers.spec.config import LoRAConfig

    base = load_chat_model("builtin:tiny-llama").model.cpu()
    adapted = apply_lora(base, LoRAConfig(r=4, dropout=0.0), task="causal_lm")
    with torch.no_grad():  # B starts at zero (a no-op adapter); a nonzero one changes the model
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.fill_(0.05)
    adapted.save_pretrained(tmp_path)
    config_file = tmp_path / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps(config | {"base_model_name_or_path": "builtin:tiny-llama"}))
    write_model_info(tmp_path, {"kind": "causal_lm", "adapter": True, "base_model": "builtin:tiny-llama"})

    merged = load_chat_model(str(tmp_path))
    assert type(merged.model).__name__ == "LlamaForCausalLM"  # merged, not a peft wrapper
    # The served model computes what base + adapter compute, not what the base alone does. (Sampled
    # text is no test of that: a seeded draw from the tiny model's near-flat distribution often
    # lands on the same bytes under both.)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        served, expected, plain = (m(input_ids=ids).logits for m in (merged.model, adapted, chat.model))
    torch.testing.assert_close(served, expected, rtol=1e-5, atol=1e-5)
    assert (served - plain).abs().max() > 0.1
    tuned = generate_chat(merged, request(max_tokens=12, seed=2))
    assert generate_chat(merged, request(max_tokens=12, seed=2)) == tuned
