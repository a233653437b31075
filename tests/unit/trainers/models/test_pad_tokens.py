"""Tokenizers without a pad token, and tokenizers larger than the model's embedding table.

Tiny random models saved as directories: a Llama with a Llama-3-style tokenizer (BOS and EOS, no pad)
and a GPT-2 with a GPT-2-style one (one token is BOS, EOS and unknown; no pad). Every trainer, LoRA,
model graders, the critic started from a reward model, and `score` run on them; a checkpoint reloads
with ``from_pretrained`` as the trainer left it.
"""

import math

import pytest
import torch
from tokenizers import processors
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

import trainers
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks
from trainers import DPOJob, GRPOJob, PPOJob, RewardModelJob, TrainingData
from trainers.data.synthetic import uppercase_preference_rows
from trainers.models.checkpoint import MODEL_DIR, PROBE_TEXT, PROBE_VOCAB
from trainers.models.export import merge_checkpoint
from trainers.models.loading import ADDED_PAD_TOKEN, ensure_pad_token, load_policy
from trainers.models.reward import load_reward_model
from trainers.models.scoring import score
from trainers.models.tiny import CHAT_TEMPLATE, byte_level_backend
from trainers.models.value import CRITIC_DIR
from trainers.spec.errors import UserError

LLAMA_BOS, LLAMA_EOS, GPT2_EOS = "<|begin_of_text|>", "<|end_of_text|>", "<|endoftext|>"
PROMPTS = [{"prompt": p} for p in ["Hello", "Say something", "Write", "Go"]]
CONTAINS_E = {"type": "string_check", "name": "has_e", "operation": "contains", "reference": "e"}
PAIRS = uppercase_preference_rows(8, seed=0)
ONLINE = {"max_steps": 2, "max_new_tokens": 4, "max_prompt_length": 16, "max_length": 64}


def byte_level_tokenizer(style: str, extra: tuple[str, ...] = (), pad: str | None = None) -> PreTrainedTokenizerFast:
    """256 byte tokens, then the style's special tokens, then `extra` special tokens; no pad unless `pad`."""
    backend = byte_level_backend()
    if style == "llama":  # BOS 256 prepended, EOS 257
        backend.add_special_tokens([LLAMA_BOS, LLAMA_EOS, *extra])
        backend.post_processor = processors.TemplateProcessing(single=f"{LLAMA_BOS} $A",
                                                               special_tokens=[(LLAMA_BOS, 256)])  # fmt: skip
        specials = {"bos_token": LLAMA_BOS, "eos_token": LLAMA_EOS}
    else:  # GPT-2: one token 256 is BOS, EOS and unknown, nothing prepended
        backend.add_special_tokens([GPT2_EOS, *extra])
        specials = {"bos_token": GPT2_EOS, "eos_token": GPT2_EOS, "unk_token": GPT2_EOS}
    if pad is not None:
        specials["pad_token"] = pad
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=CHAT_TEMPLATE, **specials)


def save_model(directory, style: str, *, rows: int | None = None, extra=(), pad=None, classifier=False):
    """A tiny random model of `style` with `rows` embedding rows (the tokenizer's size by default), saved."""
    tokenizer = byte_level_tokenizer(style, extra, pad)
    vocab = rows or len(tokenizer)
    torch.manual_seed(0)
    if style == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, bos_token_id=256,
                             eos_token_id=257)  # fmt: skip
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=256,
                            eos_token_id=256, num_labels=1)  # fmt: skip
        model = GPT2ForSequenceClassification(config) if classifier else GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def padless(request, tmp_path_factory):
    """(style, directory) of a model whose tokenizer has no pad token."""
    return request.param, save_model(tmp_path_factory.mktemp(request.param), request.param)


def job_of(kind: str, base: str, lora=None, reward=CONTAINS_E, reward_model_dirs=None, **extra):
    reward_dirs = reward_model_dirs or {}
    match kind:
        case "dpo":
            return DPOJob(base_model=base, lora=lora, hyperparameters={"max_steps": 2, "batch_size": 2} | extra)
        case "reward_model":
            return RewardModelJob(base_model=base, lora=lora, hyperparameters={"max_steps": 2, "batch_size": 2} | extra)
        case "grpo":
            hp = ONLINE | {"rollout_batch_size": 2, "num_generations": 2, "batch_size": 4} | extra
            return GRPOJob(base_model=base, lora=lora, reward=reward, reward_model_dirs=reward_dirs, hyperparameters=hp)
        case "ppo":
            hp = ONLINE | {"rollout_batch_size": 4, "batch_size": 2, "ppo_epochs": 1} | extra
            return PPOJob(base_model=base, lora=lora, reward=reward, reward_model_dirs=reward_dirs, hyperparameters=hp)


def train(job, root=None):
    data = TrainingData(train=PAIRS) if isinstance(job, DPOJob | RewardModelJob) else TrainingData(train=PROMPTS)
    callbacks = RecordingCallbacks(root)
    result = trainers.run(job, data, callbacks)
    assert (result.status, result.step) == ("completed", 2)
    assert all(math.isfinite(v) for step in callbacks.metrics.values() for v in step.values())
    return callbacks


@pytest.mark.trains
@pytest.mark.parametrize("kind", ["dpo", "reward_model", "grpo", "ppo"])
def test_every_trainer_runs_with_a_tokenizer_without_pad_token(padless, kind):
    style, directory = padless
    callbacks = train(job_of(kind, directory))
    if kind == "dpo" and style == "llama":  # no dropout in this Llama: the policy is its reference
        assert callbacks.metrics[1]["train/loss"] == pytest.approx(math.log(2), abs=1e-5)


@pytest.mark.trains
@pytest.mark.parametrize("kind", ["dpo", "reward_model"])
def test_lora_runs_with_a_tokenizer_without_pad_token(padless, kind):
    train(job_of(kind, padless[1], lora={"r": 2, "dropout": 0.0}))


def test_loading_adds_a_pad_token_distinct_from_eos_with_a_mean_row(padless):
    style, directory = padless
    for load in (load_policy, load_reward_model):
        model, tokenizer = load(directory)
        assert tokenizer.pad_token == ADDED_PAD_TOKEN and tokenizer.pad_token_id not in (
            tokenizer.eos_token_id, tokenizer.bos_token_id)  # fmt: skip
        emb = model.get_input_embeddings().weight
        assert emb.shape[0] == len(tokenizer) == tokenizer.pad_token_id + 1
        torch.testing.assert_close(emb[-1], emb[:-1].mean(dim=0))
        assert model.config.pad_token_id == tokenizer.pad_token_id and model.config.vocab_size == len(tokenizer)


@pytest.mark.trains
def test_score_and_model_graders_read_a_reward_model_without_pad_token(padless, tmp_path):
    style, directory = padless
    callbacks = train(job_of("reward_model", directory), tmp_path / "rm")
    rm_dir = callbacks.checkpoints[2][0] / MODEL_DIR
    scores = score(rm_dir, [{"text": "hello"}, {"prompt": "Say", "response": "SOMETHING LONGER"}])
    assert len(scores) == 2 and all(math.isfinite(s["score"]) for s in scores)

    # the checkpoint reloads as it was trained: the same rewards from from_pretrained alone
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    assert tokenizer.pad_token == ADDED_PAD_TOKEN and model.config.pad_token_id == tokenizer.pad_token_id
    reloaded, _ = load_reward_model(rm_dir)
    assert reloaded.get_input_embeddings().weight.shape[0] == len(tokenizer)  # nothing grows again

    model_reward = {"type": "model", "checkpoint_id": "rm", "normalize": False}
    train(job_of("grpo", directory, reward=model_reward, reward_model_dirs={"rm": str(rm_dir)}))
    ppo = job_of("ppo", directory, reward=model_reward, reward_model_dirs={"rm": str(rm_dir)},
                 value_model="reward_model")  # fmt: skip
    train(ppo)


def test_score_reads_a_classifier_directory_without_pad_token(tmp_path):
    directory = save_model(tmp_path / "rm", "gpt2", classifier=True)
    scores = score(tmp_path / "rm", [{"text": "a"}, {"text": "a longer text"}, {"prompt": "p", "response": "r"}])
    assert len(scores) == 3 and all(math.isfinite(s["score"]) for s in scores)
    model, tokenizer = load_reward_model(directory)
    assert tokenizer.pad_token_id == 257 and model.config.pad_token_id == 257


@pytest.mark.trains
def test_checkpoint_of_a_padless_model_reloads_with_the_trainers_logits(padless, tmp_path):
    _, directory = padless
    callbacks = train(job_of("dpo", directory, learning_rate=1e-2), tmp_path)
    saved, info = callbacks.checkpoints[2]
    model = AutoModelForCausalLM.from_pretrained(saved / MODEL_DIR).eval()
    tokenizer = AutoTokenizer.from_pretrained(saved / MODEL_DIR)
    assert tokenizer.pad_token == ADDED_PAD_TOKEN and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == model.config.vocab_size
    with torch.no_grad():
        ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
        logits = model(input_ids=ids).logits[0, -1, :PROBE_VOCAB]
    torch.testing.assert_close(logits, torch.tensor(info["probe"]["logits"]), rtol=0, atol=1e-6)
    base, _ = load_policy(directory)
    assert not torch.equal(base.get_input_embeddings().weight, model.get_input_embeddings().weight)  # it trained


@pytest.mark.trains
@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_a_tokenizer_larger_than_the_embedding_table_gets_rows_for_every_id(style, tmp_path):
    # 256 bytes + specials + 20 tokens the model never had, no pad: the table has 250 rows only
    extra = tuple(f"<|extra_{i}|>" for i in range(20))
    directory = save_model(tmp_path / "m", style, rows=250, extra=extra)
    model, tokenizer = load_policy(directory)
    assert tokenizer.pad_token == ADDED_PAD_TOKEN and tokenizer.pad_token_id == len(tokenizer) - 1
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == model.config.vocab_size
    for kind in ("dpo", "reward_model", "ppo"):
        train(job_of(kind, directory))


@pytest.mark.trains
def test_a_pad_token_beyond_the_embedding_table_gets_its_row(tmp_path):
    # the tokenizer names a pad token that the model has no row for (as Qwen2's tokenizer class
    # appends its own pad): padding with it used to index past the table
    directory = save_model(tmp_path / "m", "llama", extra=("<|pad|>",), pad="<|pad|>", rows=258)
    model, tokenizer = load_policy(directory)
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id == 258
    assert model.get_input_embeddings().weight.shape[0] == 259 and model.config.pad_token_id == 258
    for kind in ("dpo", "reward_model", "ppo"):
        train(job_of(kind, directory))


@pytest.mark.trains
def test_a_named_pad_token_with_a_row_is_chosen_without_growing_the_table(tmp_path):
    extra = ("<|reserved_0|>", "<|finetune_right_pad_id|>")
    directory = save_model(tmp_path / "m", "llama", extra=extra)
    model, tokenizer = load_policy(directory)
    assert tokenizer.pad_token == "<|finetune_right_pad_id|>" and tokenizer.pad_token_id == 259
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == 260
    assert model.config.pad_token_id == 259
    train(job_of("dpo", directory))


def test_a_model_whose_embeddings_cannot_grow_is_a_user_error_naming_it():
    tokenizer = byte_level_tokenizer("gpt2")
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=32)
    model = GPT2LMHeadModel(config)

    def cannot_grow(*args, **kwargs):
        raise NotImplementedError("this model does not resize its embeddings")

    model.resize_token_embeddings = cannot_grow  # as custom architectures without the library's resizing
    with pytest.raises(UserError, match="my-model") as info:
        ensure_pad_token(model, tokenizer, ref="my-model")
    assert info.value.param == "base_model"


@pytest.mark.trains
@pytest.mark.parametrize("kind", ["dpo", "reward_model"])
def test_a_lora_checkpoint_of_a_padless_model_merges_into_a_plain_model(padless, kind, tmp_path):
    _, directory = padless
    callbacks = train(job_of(kind, directory, lora={"r": 2, "dropout": 0.0}, learning_rate=1e-2), tmp_path / "run")
    adapter_dir = callbacks.checkpoints[2][0] / MODEL_DIR
    merge_checkpoint(adapter_dir, tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.pad_token == ADDED_PAD_TOKEN
    if kind == "reward_model":
        items = [{"text": "hello"}, {"prompt": "Say", "response": "SOMETHING"}]
        merged = [s["score"] for s in score(tmp_path / "merged", items)]
        assert merged == pytest.approx([s["score"] for s in score(adapter_dir, items)], abs=1e-5)
        return
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == model.config.vocab_size
    with torch.no_grad():
        ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
        logits = model(input_ids=ids).logits[0, -1, :PROBE_VOCAB]
    torch.testing.assert_close(logits, torch.tensor(callbacks.checkpoints[2][1]["probe"]["logits"]), rtol=0, atol=1e-5)


@pytest.mark.trains
def test_a_reward_model_with_a_smaller_table_than_the_policy_reads_the_text_of_ids_past_it(tmp_path):
    # one tokenizer, two tables (as a family's model sizes pad the vocabulary differently): the
    # policy has 300 rows and samples ids the reward model (259 rows, pad included) has no row for
    policy = save_model(tmp_path / "policy", "llama", rows=300)
    reward_dir = save_model(tmp_path / "rm", "llama")
    model_reward = {"type": "model", "checkpoint_id": "rm", "normalize": False}
    job = job_of("grpo", policy, reward=model_reward, reward_model_dirs={"rm": reward_dir}, max_new_tokens=8)
    callbacks = train(job)
    assert any("scores the sampled token ids" in message for _, message in callbacks.events)


@pytest.mark.trains
def test_a_critic_from_a_reward_model_with_a_smaller_table_grows_to_the_policys(tmp_path):
    policy = save_model(tmp_path / "policy", "llama", rows=300)
    reward_dir = save_model(tmp_path / "rm", "llama")  # 259 rows once its pad is added
    model_reward = {"type": "model", "checkpoint_id": "rm", "normalize": False}
    job = job_of("ppo", policy, reward=model_reward, reward_model_dirs={"rm": reward_dir}, value_model="reward_model",
                 max_new_tokens=8)  # fmt: skip
    callbacks = train(job, tmp_path / "run")
    critic = AutoModelForSequenceClassification.from_pretrained(callbacks.checkpoints[2][0] / CRITIC_DIR)
    assert critic.get_input_embeddings().weight.shape[0] == 300
