"""Every trainer on tiny random models of the common architectures (`architectures.py`).

Each architecture's tokenizer is in the style of its real checkpoints: Llama 3 and Mistral have no
pad token (distinct BOS and EOS), GPT-2 and GPT-NeoX one ``<|endoftext|>`` for BOS and EOS; the
others a pad token of their own. A run is 2 steps: finite losses, and the first step's values
equal their analytic ones (the policy still is the reference), and sampling uses the current cache
API (no deprecation warning). Sliding-window models (alone, or
Gemma's mix of local and global layers) must give the same log-probs and rewards whether the
trainers pack rows that share a prompt or not.
"""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import trainers
from tests.unit.trainers.architectures import ARCHITECTURES, DROPOUT, SLIDING, WINDOW, build
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks
from trainers import DPOJob, GRPOJob, PPOJob, RewardModelJob, TrainingData
from trainers.data.preference import collate_pairs, tokenize_pairs
from trainers.data.synthetic import uppercase_preference_rows
from trainers.models.checkpoint import MODEL_DIR, PROBE_TEXT, PROBE_VOCAB
from trainers.models.loading import load_policy
from trainers.models.reward import load_reward_model, rewards
from trainers.models.scoring import score
from trainers.rl.response_logprobs import SharedPromptLayout, response_logits
from trainers.rl.rollout import generate

STYLE = {"llama": "llama3", "mistral": "llama3", "gpt2": "gpt2", "gpt_neox": "gpt2"}  # else "pad"
PROMPTS = [{"prompt": p} for p in ["Hello", "Say something", "Write", "Go"]]
CONTAINS_E = {"type": "string_check", "name": "has_e", "operation": "contains", "reference": "e"}
LENGTHS = {"max_length": 48, "max_prompt_length": 24}
DPO = {"learning_rate": 1e-3, "max_steps": 2, "batch_size": 2} | LENGTHS
REWARD = {"learning_rate": 1e-3, "max_steps": 2, "batch_size": 2} | LENGTHS
GRPO = {"learning_rate": 1e-2, "max_steps": 2, "rollout_batch_size": 2, "num_generations": 4, "batch_size": 8,
        "max_new_tokens": 6} | LENGTHS  # fmt: skip
PPO = {"learning_rate": 1e-2, "critic_learning_rate": 3e-3, "max_steps": 2, "rollout_batch_size": 4, "batch_size": 4,
       "ppo_epochs": 2, "max_new_tokens": 6} | LENGTHS  # fmt: skip
PREFERENCES = uppercase_preference_rows(4, seed=0)
# Sampling must use the current cache API: `past_key_values` goes away in transformers 5.40.
pytestmark = pytest.mark.filterwarnings("error:`past_key_values` is deprecated:FutureWarning")


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """The tiny models' matrices gain nothing from intra-op threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """`model_dir(arch, **variant)`: the saved model's directory, built once per session."""
    root = tmp_path_factory.mktemp("architectures")
    built = {}

    def get(arch, **variant):
        variant = {"tokenizer": STYLE.get(arch, "pad")} | variant
        key = (arch, *sorted(variant.items()))
        if key not in built:
            built[key] = build(arch, root / "-".join(map(str, key)), **variant)
        return str(built[key])

    return get


def finite(metrics):
    return all(math.isfinite(v) for step in metrics.values() for v in step.values())


def run(job, data, callbacks=None):
    callbacks = callbacks or RecordingCallbacks()
    result = trainers.run(job, data, callbacks)
    assert (result.status, result.step) == ("completed", job.hyperparameters.max_steps)
    assert sorted(callbacks.metrics) == [1, 2] and finite(callbacks.metrics), callbacks.metrics
    return callbacks


@torch.no_grad()
def probe(model, tokenizer):
    ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
    logits = model.eval()(input_ids=ids).logits
    return (logits[0, -1] if logits.dim() == 3 else logits[0])[:PROBE_VOCAB]


@pytest.mark.trains
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_dpo_starts_at_ln2_and_its_checkpoint_reloads_with_the_trainers_logits(arch, model_dir, tmp_path):
    callbacks = run(DPOJob(base_model=model_dir(arch), hyperparameters=DPO), TrainingData(train=PREFERENCES),
                    RecordingCallbacks(tmp_path))  # fmt: skip
    assert callbacks.metrics[1]["train/loss"] == pytest.approx(math.log(2), abs=1e-5)
    directory, info = callbacks.checkpoints[2]
    model = AutoModelForCausalLM.from_pretrained(directory / MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(directory / MODEL_DIR)
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.pad_token_id < model.get_input_embeddings().weight.shape[0]
    torch.testing.assert_close(probe(model, tokenizer), torch.tensor(info["probe"]["logits"]), rtol=0, atol=1e-5)


@pytest.mark.trains
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_dpo_with_lora_starts_at_ln2(arch, model_dir):
    job = DPOJob(base_model=model_dir(arch), lora={"r": 4, "dropout": 0.0}, hyperparameters=DPO)
    callbacks = run(job, TrainingData(train=PREFERENCES))
    assert callbacks.metrics[1]["train/loss"] == pytest.approx(math.log(2), abs=1e-5)


@pytest.mark.trains
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reward_model_trains_and_its_checkpoint_reloads_with_the_trainers_logits(arch, model_dir, tmp_path):
    job = RewardModelJob(base_model=model_dir(arch), hyperparameters=REWARD)
    callbacks = run(job, TrainingData(train=PREFERENCES), RecordingCallbacks(tmp_path))
    # a fresh score head (std 0.02) barely separates the responses
    assert callbacks.metrics[1]["train/loss"] == pytest.approx(math.log(2), abs=0.05)
    directory, info = callbacks.checkpoints[2]
    model = AutoModelForSequenceClassification.from_pretrained(directory / MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(directory / MODEL_DIR)
    torch.testing.assert_close(probe(model, tokenizer), torch.tensor(info["probe"]["logits"]), rtol=0, atol=1e-5)
    scores = score(directory / MODEL_DIR, [{"prompt": r["prompt"], "response": r["chosen"]} for r in PREFERENCES])
    assert len(scores) == 4 and all(math.isfinite(s["score"]) for s in scores)


@pytest.mark.trains
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_grpo_starts_with_zero_kl(arch, model_dir):
    job = GRPOJob(base_model=model_dir(arch), reward=CONTAINS_E, hyperparameters=GRPO)
    callbacks = run(job, TrainingData(train=PROMPTS))
    assert callbacks.metrics[1]["objective/kl"] == pytest.approx(0, abs=1e-6)


@pytest.mark.trains
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_ppo_starts_with_zero_kl_and_no_clipping(arch, model_dir):
    job = PPOJob(base_model=model_dir(arch), reward=CONTAINS_E, hyperparameters=PPO)
    callbacks = run(job, TrainingData(train=PROMPTS))
    first = callbacks.metrics[1]
    assert first["objective/kl"] == pytest.approx(0, abs=1e-6) and first["policy/clipfrac"] == 0


def trainer_job(kind, base):
    """A 2-step job of `kind` on `base`, and its data."""
    if kind in ("dpo", "reward_model"):
        job = DPOJob if kind == "dpo" else RewardModelJob
        return job(base_model=base, hyperparameters=DPO), TrainingData(train=PREFERENCES)
    job, hp = (GRPOJob, GRPO) if kind == "grpo" else (PPOJob, PPO)
    return job(base_model=base, reward=CONTAINS_E, hyperparameters=hp), TrainingData(train=PROMPTS)


@pytest.mark.trains
@pytest.mark.parametrize("kind", ["dpo", "reward_model", "grpo", "ppo"])
def test_a_pad_token_past_the_embedding_rows_ends_up_inside_the_table(kind, model_dir, tmp_path):
    # the tokenizer's last token, its pad, has no embedding row (and the config no pad id)
    job, data = trainer_job(kind, model_dir("llama", tokenizer="pad_last", missing_rows=1))
    callbacks = run(job, data, RecordingCallbacks(tmp_path))
    directory, info = callbacks.checkpoints[2]
    tokenizer = AutoTokenizer.from_pretrained(directory / MODEL_DIR)
    load = AutoModelForSequenceClassification if kind == "reward_model" else AutoModelForCausalLM
    model = load.from_pretrained(directory / MODEL_DIR)
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id < model.get_input_embeddings().weight.shape[0]
    torch.testing.assert_close(probe(model, tokenizer), torch.tensor(info["probe"]["logits"]), rtol=0, atol=1e-5)


@pytest.mark.trains
@pytest.mark.parametrize("arch", DROPOUT)
def test_dropout_in_the_config_does_not_move_the_first_step(arch, model_dir):
    base = model_dir(arch, dropout=0.1)
    dpo = run(DPOJob(base_model=base, hyperparameters=DPO), TrainingData(train=PREFERENCES))
    assert dpo.metrics[1]["train/loss"] == pytest.approx(math.log(2), abs=1e-5)
    grpo = run(GRPOJob(base_model=base, reward=CONTAINS_E, hyperparameters=GRPO), TrainingData(train=PROMPTS))
    assert grpo.metrics[1]["objective/kl"] == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("arch", SLIDING)
@torch.no_grad()
def test_sliding_window_log_probs_are_those_of_one_row_per_completion(arch, model_dir):
    model, tokenizer = load_policy(model_dir(arch, sliding=True))
    prompts = [tokenizer(text).input_ids for text in ("say: hello there", "write") for _ in range(3)]
    rollout = generate(model, prompts, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                       max_new_tokens=12, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert SharedPromptLayout.of(rollout) is not None  # GRPO's groups: packing applies
    assert (rollout.prompt_mask.sum(1) + rollout.response_lengths).max() > 2 * WINDOW

    trained = response_logits(model, rollout, 1.0)  # (B, A, V) as the trainers compute them
    input_ids, attention_mask, position_ids = rollout.model_inputs()
    A = rollout.response_ids.shape[1]
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                   logits_to_keep=A + 1).logits[:, :-1]  # fmt: skip
    real = rollout.response_mask.bool()
    torch.testing.assert_close(trained[real], logits[real], rtol=0, atol=1e-4)


@pytest.mark.trains
@pytest.mark.parametrize("arch", SLIDING)
def test_sliding_window_rewards_are_those_of_one_row_per_response(arch, model_dir):
    base = model_dir(arch, sliding=True)
    rows = uppercase_preference_rows(4, seed=1, response_length=12)
    callbacks = run(RewardModelJob(base_model=base, hyperparameters=REWARD | {"batch_size": 4}),
                    TrainingData(train=rows))  # fmt: skip

    model, tokenizer = load_reward_model(base)  # the weights the first step started from
    pairs = tokenize_pairs(rows, tokenizer, **LENGTHS)
    assert max(len(p.prompt_ids) + len(p.chosen_ids) for p in pairs) > WINDOW
    batch = collate_pairs(pairs, tokenizer.pad_token_id)  # one row per response, no packing
    with torch.no_grad():
        r = rewards(model, batch.input_ids, batch.attention_mask)  # (2B,) chosen first
    first = callbacks.metrics[1]
    assert first["train/margin"] == pytest.approx((r[:4] - r[4:]).mean().item(), abs=1e-5)
    assert first["train/reward_mean"] == pytest.approx(r.mean().item(), abs=1e-5)
