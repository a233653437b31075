"""DPO with LoRA: only the adapter trains, the reference is the adapter switched off, and the adapter
checkpoint merges into a plain model that can start a new job."""

import json
import math

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import trainers
import trainers.run_setup
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, tiny
from trainers import DPOJob, TrainingData
from trainers.data.synthetic import uppercase_preference_rows
from trainers.models.checkpoint import MODEL_DIR, MODEL_INFO_FILE, PROBE_TEXT, PROBE_VOCAB
from trainers.models.export import merge_checkpoint
from trainers.models.loading import load_policy

pytestmark = pytest.mark.trains

BASE = "builtin:tiny-llama"


def lora_job(base_model=BASE, **hyperparameters):
    return DPOJob(base_model=base_model, lora={"r": 8}, hyperparameters=hyperparameters)


def probe(model, tokenizer):
    with torch.no_grad():
        ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
        return model.eval()(input_ids=ids).logits[0, -1, :PROBE_VOCAB]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 30-step LoRA run: its callbacks (checkpoint at 30) and the policy it trained."""
    captured = {}
    real = trainers.run_setup.load_trainable_model

    def capture(*args, **kwargs):
        captured["policy"], tokenizer = real(*args, **kwargs)
        return captured["policy"], tokenizer

    trainers.run_setup.load_trainable_model = capture
    try:
        callbacks = RecordingCallbacks(tmp_path_factory.mktemp("lora"))
        job = lora_job(learning_rate=1e-2, max_steps=30, batch_size=8)
        trainers.run(job, TrainingData(train=uppercase_preference_rows(256, seed=1)), callbacks)
    finally:
        trainers.run_setup.load_trainable_model = real
    return callbacks, captured["policy"]


def test_lora_dpo_learns_the_synthetic_preference(trained):
    callbacks, _ = trained
    assert all(callbacks.metrics[s]["rewards/accuracies"] > 0.9 for s in range(26, 31))
    assert callbacks.metrics[1]["train/loss"] == pytest.approx(math.log(2), abs=1e-5)  # B = 0: policy == reference
    assert callbacks.metrics[30]["rewards/margins"] > 0.2 and callbacks.metrics[30]["train/loss"] < 0.6


def test_only_the_adapter_changes_and_only_the_adapter_is_saved(trained):
    callbacks, policy = trained
    assert isinstance(policy, PeftModel)
    initial = tiny()[0].state_dict()
    trained_base = {k.replace(".base_layer", ""): v for k, v in policy.get_base_model().state_dict().items()
                    if "lora_" not in k}  # fmt: skip
    assert trained_base.keys() == initial.keys()
    assert all(torch.equal(trained_base[k], initial[k]) for k in initial)  # bit-identical base weights
    assert any(p.abs().sum() > 0 for n, p in policy.named_parameters() if "lora_B" in n)  # B starts at 0

    directory, info = callbacks.checkpoints[30]
    model_dir = directory / MODEL_DIR
    assert info["model"] == {"kind": "causal_lm", "adapter": True, "base_model": BASE}
    assert json.loads((model_dir / MODEL_INFO_FILE).read_text()) == info["model"]
    assert json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == BASE
    assert (model_dir / "tokenizer.json").is_file() and not (model_dir / "model.safetensors").exists()
    with safe_open(model_dir / "adapter_model.safetensors", "pt") as saved:
        assert saved.keys() and all("lora_" in k for k in saved.keys())


def test_merged_model_gives_the_logits_of_base_plus_adapter(trained, tmp_path):
    callbacks, _ = trained
    directory, info = callbacks.checkpoints[30]
    merged, tokenizer = load_policy(directory / MODEL_DIR)
    base, _ = load_policy(BASE)
    with_adapter = PeftModel.from_pretrained(base, directory / MODEL_DIR)

    assert not isinstance(merged, PeftModel)
    ids = tokenizer(["say: abc\nXYZ", "a longer prompt\nhello"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = with_adapter.eval()(**ids).logits
        torch.testing.assert_close(merged(**ids).logits, expected, rtol=0, atol=1e-5)
    in_memory = torch.tensor(info["probe"]["logits"])  # the trained model's, before saving
    torch.testing.assert_close(probe(merged, tokenizer), in_memory, rtol=0, atol=1e-5)

    merge_checkpoint(directory / MODEL_DIR, tmp_path / "merged")
    exported = tmp_path / "merged"
    written = {p.name for p in exported.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", MODEL_INFO_FILE} <= written
    assert json.loads((exported / MODEL_INFO_FILE).read_text()) == info["model"] | {"adapter": False}
    plain = AutoModelForCausalLM.from_pretrained(exported)
    torch.testing.assert_close(probe(plain, tokenizer), in_memory, rtol=0, atol=1e-5)


def test_a_lora_checkpoint_is_the_base_model_of_a_new_job(trained, tmp_path):
    trained_callbacks, _ = trained
    model_dir = trained_callbacks.checkpoints[30][0] / MODEL_DIR
    callbacks = RecordingCallbacks(tmp_path)
    # one step at a negligible rate: the new job's model is still the merged LoRA model
    job = DPOJob(base_model=str(model_dir), hyperparameters={"max_steps": 1, "learning_rate": 1e-9})
    trainers.run(job, TrainingData(train=uppercase_preference_rows(8)), callbacks)

    _, info = callbacks.checkpoints[1]
    assert info["model"] == {"kind": "causal_lm", "adapter": False, "base_model": str(model_dir)}
    lora_probe = torch.tensor(trained_callbacks.checkpoints[30][1]["probe"]["logits"])
    torch.testing.assert_close(torch.tensor(info["probe"]["logits"]), lora_probe, rtol=0, atol=1e-4)
    assert not torch.allclose(lora_probe, probe(*tiny()), atol=1e-3)  # and not the builtin base


def test_interrupted_and_resumed_lora_run_matches_an_uninterrupted_one(tmp_path):
    # LoRA's dropout draws random numbers every step, so the restored RNG state matters here.
    rows = uppercase_preference_rows(20, seed=5)
    job = lora_job(learning_rate=5e-3, max_steps=4, batch_size=8, warmup_steps=1)
    straight = RecordingCallbacks()
    trainers.run(job, TrainingData(train=rows), straight)

    interrupted = RecordingCallbacks(tmp_path / "first", stop_after=2)
    trainers.run(job, TrainingData(train=rows), interrupted)
    resumed = RecordingCallbacks(tmp_path / "second")
    result = trainers.run(job, TrainingData(train=rows), resumed, resume_from=interrupted.checkpoints[2][0])

    assert (result.status, result.step) == ("completed", 4)
    combined = interrupted.metrics | resumed.metrics
    assert sorted(combined) == [1, 2, 3, 4]
    for step, metrics in straight.metrics.items():
        assert combined[step] == pytest.approx(metrics, abs=1e-6), f"step {step}"


def test_lora_with_precomputed_and_on_the_fly_reference_gives_the_same_run():
    rows, eval_rows = uppercase_preference_rows(16, seed=8), uppercase_preference_rows(4, seed=9)
    runs = {}
    for precompute in (True, False):
        callbacks = RecordingCallbacks()
        job = lora_job(learning_rate=5e-3, max_steps=3, batch_size=8, precompute_ref_logprobs=precompute)
        trainers.run(job, TrainingData(train=rows, eval=eval_rows), callbacks)
        runs[precompute] = callbacks.metrics
    for step, metrics in runs[False].items():
        assert runs[True][step] == pytest.approx(metrics, abs=1e-5), f"step {step}"
    assert runs[True][3]["eval/loss"] > 0
