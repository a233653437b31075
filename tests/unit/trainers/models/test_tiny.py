import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.unit.trainers.trainer_fixtures import tiny
from trainers.models.tiny import build_tiny_llama, byte_level_backend


def test_two_builds_have_identical_weights_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, _ = build_tiny_llama()
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)  # a different global state must not matter
    second, _ = build_tiny_llama()
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.config.tie_word_embeddings is False
    assert not torch.equal(a["model.embed_tokens.weight"], a["lm_head.weight"])


def test_tokenizer_round_trips_through_save_pretrained(tmp_path):
    _, tokenizer = tiny()
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "héllo <|user|> wörld </s> 😀"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=False) == "<s>" + text
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        assert getattr(loaded, name) == getattr(tokenizer, name)
    assert loaded.pad_token_id != loaded.eos_token_id
    messages = [{"role": "user", "content": "hi"}]
    assert loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<s><|user|>\nhi</s><|assistant|>\n"
    )
    assert len(loaded) == len(tokenizer) == 256 + 6


def test_model_round_trips_through_auto_model(tmp_path):
    model, _ = tiny()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    input_ids = torch.tensor([[257, 1, 2, 3, 200, 258]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits, rtol=0, atol=0)


def test_the_byte_level_backend_has_one_token_per_byte_and_no_special_token():
    backend = byte_level_backend()
    assert backend.get_vocab_size() == 256
    encoding = backend.encode("hé !")
    assert encoding.ids == [104, 195, 169, 32, 33]  # the UTF-8 bytes, no BOS
    assert backend.decode(encoding.ids) == "hé !"
    _, tokenizer = tiny()
    assert tokenizer("hé !", add_special_tokens=False)["input_ids"] == encoding.ids  # builtin:tiny-llama's bytes
