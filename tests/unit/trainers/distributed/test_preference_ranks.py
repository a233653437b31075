"""DPO and reward models on 2 gloo processes equal one process: losses, evaluations, checkpoints, resumes.

Each run is a real torchrun launch (`train_in_ranks`, ~15 s on 2 cores), shared by every
assertion that reads it. The batches are chosen to leave a rank without rows somewhere:
``batch_size`` 3 in 2 micro-batches is 2 + 1 pairs (the single pair's micro-batch gives rank 1
the weight-0 row of `Ranks.batch_share`), and 5 evaluation pairs in forwards of 2 end with one.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.unit.trainers.distributed.rank_runs import train_in_ranks
from trainers.data.synthetic import uppercase_preference_rows
from trainers.models.checkpoint import MODEL_DIR, PROBE_TEXT, PROBE_VOCAB

pytestmark = pytest.mark.trains

TOLERANCE = 1e-4
HYPERPARAMETERS = {"learning_rate": 2e-3, "max_steps": 4, "batch_size": 3, "gradient_accumulation_steps": 2,
                   "eval_every": 2, "checkpoint_every": 2}  # fmt: skip
DATA = {"train": uppercase_preference_rows(13, seed=3), "eval": uppercase_preference_rows(5, seed=4)}


def job(job_type="dpo", strategy="ddp", lora=None, **hyperparameters):
    return {"type": job_type, "base_model": "builtin:tiny-llama", "seed": 5, "strategy": strategy, "lora": lora,
            "hyperparameters": HYPERPARAMETERS | hyperparameters}  # fmt: skip


def assert_same_metrics(run, expected, steps, names):
    for step in steps:
        for name in names:
            assert run["metrics"][step][name] == pytest.approx(expected["metrics"][step][name], rel=TOLERANCE), \
                (step, name)  # fmt: skip


def assert_same_weights(directory, expected_directory, file="model.safetensors"):
    weights, expected = load_file(directory / MODEL_DIR / file), load_file(expected_directory / MODEL_DIR / file)
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, rtol=TOLERANCE, atol=TOLERANCE, msg=name)


def info(directory):
    return json.loads((directory / "info.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs launched on first use, each once: ``runs(name)`` → ``(record, output directory)``."""
    root = tmp_path_factory.mktemp("ranks")
    specs = {
        "dpo_1": lambda: (job(), 1, None),
        "dpo_ddp": lambda: (job(), 2, None),
        "dpo_fsdp": lambda: (job(strategy="fsdp"), 2, None),
        # The FSDP run's step-2 checkpoint, continued on one process; the 1-process one on two.
        "fsdp_resumed_on_1": lambda: (job(), 1, root / "dpo_fsdp" / "checkpoint-2"),
        "resumed_on_ddp": lambda: (job(), 2, root / "dpo_1" / "checkpoint-2"),
        "lora_1": lambda: (job(lora={"r": 8, "dropout": 0.0}), 1, None),
        "lora_ddp": lambda: (job(lora={"r": 8, "dropout": 0.0}), 2, None),
        "reward_1": lambda: (job("reward_model", center_rewards_coefficient=0.05, reward_stats_rows=7), 1, None),
        "reward_ddp": lambda: (job("reward_model", center_rewards_coefficient=0.05, reward_stats_rows=7), 2, None),
    }
    done = {}

    def run(name):
        if name not in done:
            spec, processes, resume_from = specs[name]()
            if resume_from is not None:
                run(resume_from.parent.name)  # the run whose checkpoint it continues
            data = DATA if spec["type"] == "dpo" else reward_data()
            record = train_in_ranks(spec, data, root / name, processes=processes, resume_from=resume_from)
            done[name] = (record, root / name)
        return done[name]

    return run


def reward_data():
    """The preference rows with a margin on every other pair."""
    with_margins = [row | ({"margin": 0.5 * (i % 3)} if i % 2 else {}) for i, row in enumerate(DATA["train"])]
    return {"train": with_margins, "eval": DATA["eval"]}


DPO_TRAIN = ("train/loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "train/grad_norm")
DPO_EVAL = ("eval/loss", "eval/rewards/accuracies", "eval/rewards/margins")


def test_dpo_on_two_ddp_processes_equals_one_process(runs):
    (one, one_dir), (two, two_dir) = runs("dpo_1"), runs("dpo_ddp")

    assert one["result"]["status"] == two["result"]["status"] == "completed"
    assert sorted(two["metrics"]) == sorted(one["metrics"]) == [1, 2, 3, 4]
    assert_same_metrics(two, one, [1, 2, 3, 4], DPO_TRAIN)
    assert_same_metrics(two, one, [2, 4], DPO_EVAL)
    tokens = [two["metrics"][step]["train/num_tokens"] for step in [1, 2, 3, 4]]  # each step's rows, every rank's
    assert tokens == [one["metrics"][step]["train/num_tokens"] for step in [1, 2, 3, 4]] and 0 < tokens[0] < tokens[3]
    assert_same_weights(two_dir / "checkpoint-4", one_dir / "checkpoint-4")
    assert ["info", "2 processes, strategy ddp"] in two["events"]


def test_dpo_on_two_fsdp_processes_equals_ddp(runs):
    (ddp, ddp_dir), (fsdp, fsdp_dir) = runs("dpo_ddp"), runs("dpo_fsdp")

    assert_same_metrics(fsdp, ddp, [1, 2, 3, 4], DPO_TRAIN)
    assert_same_metrics(fsdp, ddp, [2, 4], DPO_EVAL)
    assert_same_weights(fsdp_dir / "checkpoint-4", ddp_dir / "checkpoint-4")
    assert ["info", "2 processes, strategy fsdp"] in fsdp["events"]


def test_fsdp_checkpoint_loads_with_transformers_and_gives_the_trainers_probe(runs):
    _, fsdp_dir = runs("dpo_fsdp")
    directory = fsdp_dir / "checkpoint-4"

    model = AutoModelForCausalLM.from_pretrained(directory / MODEL_DIR).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory / MODEL_DIR)
    with torch.no_grad():
        logits = model(input_ids=tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]).logits[0, -1, :PROBE_VOCAB]

    torch.testing.assert_close(logits, torch.tensor(info(directory)["probe"]["logits"]), rtol=0, atol=TOLERANCE)


def test_dpo_lora_on_two_ddp_processes_equals_one_process(runs):
    (one, one_dir), (two, two_dir) = runs("lora_1"), runs("lora_ddp")

    assert_same_metrics(two, one, [1, 2, 3, 4], DPO_TRAIN)
    assert_same_metrics(two, one, [2, 4], DPO_EVAL)
    assert_same_weights(two_dir / "checkpoint-4", one_dir / "checkpoint-4", "adapter_model.safetensors")
    assert one["metrics"][4]["train/loss"] != pytest.approx(one["metrics"][1]["train/loss"], rel=1e-3)  # it trained


def test_a_two_process_fsdp_checkpoint_resumes_on_one_process(runs):
    (straight, straight_dir), (resumed, resumed_dir) = runs("dpo_1"), runs("fsdp_resumed_on_1")

    assert resumed["result"]["status"] == "completed" and sorted(resumed["metrics"]) == [3, 4]
    assert_same_metrics(resumed, straight, [3, 4], DPO_TRAIN)
    assert_same_metrics(resumed, straight, [4], DPO_EVAL)
    assert_same_weights(resumed_dir / "checkpoint-4", straight_dir / "checkpoint-4")


def test_a_one_process_checkpoint_resumes_on_two_ddp_processes(runs):
    (straight, straight_dir), (resumed, resumed_dir) = runs("dpo_1"), runs("resumed_on_ddp")

    assert resumed["result"]["status"] == "completed" and sorted(resumed["metrics"]) == [3, 4]
    assert_same_metrics(resumed, straight, [3, 4], DPO_TRAIN)
    assert_same_metrics(resumed, straight, [4], DPO_EVAL)
    assert_same_weights(resumed_dir / "checkpoint-4", straight_dir / "checkpoint-4")


REWARD_TRAIN = ("train/loss", "train/accuracy", "train/margin", "train/reward_mean", "train/reward_std",
                "train/grad_norm")  # fmt: skip
REWARD_EVAL = ("eval/loss", "eval/accuracy", "eval/margin", "eval/reward_mean", "eval/reward_std")


def test_reward_model_on_two_ddp_processes_equals_one_process(runs):
    (one, one_dir), (two, two_dir) = runs("reward_1"), runs("reward_ddp")

    assert sorted(two["metrics"]) == sorted(one["metrics"]) == [1, 2, 3, 4]
    assert_same_metrics(two, one, [1, 2, 3, 4], REWARD_TRAIN)
    assert_same_metrics(two, one, [2, 4], REWARD_EVAL)
    for step in (2, 4):
        model, expected = info(two_dir / f"checkpoint-{step}")["model"], info(one_dir / f"checkpoint-{step}")["model"]
        assert model["reward_mean"] == pytest.approx(expected["reward_mean"], rel=TOLERANCE)
        assert model["reward_std"] == pytest.approx(expected["reward_std"], rel=TOLERANCE)
    assert_same_weights(two_dir / "checkpoint-4", one_dir / "checkpoint-4")
