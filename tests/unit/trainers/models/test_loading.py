import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from trainers.models.loading import load_policy
from trainers.spec.errors import ModelNotFoundError


def test_builtin_has_a_distinct_pad_token():
    model, tokenizer = load_policy("builtin:tiny-llama")
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


@pytest.mark.parametrize("ref", ["builtin:no-such-model", "nobody/no-such-model-here", "not a valid id!!"])
def test_unknown_references_name_themselves(ref):
    with pytest.raises(ModelNotFoundError, match=ref.replace("!", r"\!")) as info:
        load_policy(ref)
    assert info.value.param == "base_model"


def test_directory_without_a_model_is_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match=str(tmp_path)):
        load_policy(tmp_path)


def test_local_directory_without_pad_token_gets_one(tmp_path):
    backend = Tokenizer(models.WordLevel({"a": 0, "b": 1, "<eos>": 2, "<unk>": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")
    config = LlamaConfig(vocab_size=4, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, eos_token_id=2, bos_token_id=None)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    model, loaded = load_policy(tmp_path)
    again, _ = load_policy(tmp_path)

    assert loaded.pad_token_id == 4 and loaded.eos_token_id == 2
    emb = model.get_input_embeddings().weight
    assert emb.shape == (5, 16) and model.get_output_embeddings().weight.shape == (5, 16)
    torch.testing.assert_close(emb[4], emb[:4].mean(dim=0))
    assert torch.equal(emb, again.get_input_embeddings().weight)  # no random draw for the new row
    assert model.config.pad_token_id == 4


def test_an_adapter_that_does_not_name_its_base_is_not_found(tmp_path):
    from trainers.models.lora import apply_lora
    from trainers.models.tiny import build_tiny_llama
    from trainers.spec.config import LoRAConfig

    model, _ = build_tiny_llama()
    adapter = apply_lora(model, LoRAConfig(r=2), task="causal_lm")
    adapter.peft_config["default"].base_model_name_or_path = None
    adapter.save_pretrained(tmp_path, save_embedding_layers=False)
    with pytest.raises(ModelNotFoundError, match="does not name its base model"):
        load_policy(tmp_path)
