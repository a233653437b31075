"""merge_checkpoint for each model kind, and the errors it names."""

import json

import pytest
import torch

from tests.unit.trainers.trainer_fixtures import tiny
from trainers.loop import build_optimizer
from trainers.models.checkpoint import MODEL_DIR, MODEL_INFO_FILE, save_checkpoint, write_model_info
from trainers.models.export import merge_checkpoint
from trainers.models.loading import load_policy
from trainers.models.lora import apply_lora
from trainers.spec.config import LoopHyperparameters, LoRAConfig
from trainers.spec.errors import ModelNotFoundError, UserError


def save(directory, model, tokenizer, model_info):
    optimizer, scheduler = build_optimizer([torch.nn.Parameter(torch.zeros(1))], LoopHyperparameters())
    save_checkpoint(directory, model=model, tokenizer=tokenizer, optimizer_state=optimizer.state_dict(),
                    scheduler=scheduler, step=1,
                    data_position={}, job={}, model_info=model_info)  # fmt: skip
    return directory / MODEL_DIR


def randomise_adapter(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))


def test_a_reward_model_adapter_merges_with_its_head(tmp_path):
    from trainers.models.reward import load_reward_model

    base, tokenizer = load_reward_model("builtin:tiny-llama")
    model = apply_lora(base, LoRAConfig(r=4), task="seq_cls")
    randomise_adapter(model)
    info = {"kind": "reward_model", "adapter": True, "base_model": "builtin:tiny-llama",
            "reward_mean": 0.25, "reward_std": 2.0}  # fmt: skip
    model_dir = save(tmp_path / "checkpoint", model, tokenizer, info)
    ids = tokenizer(["say: abc\nXYZ</s>"], return_tensors="pt")
    with torch.no_grad():
        expected = model.eval()(**ids).logits  # (1, 1)

    merge_checkpoint(model_dir, tmp_path / "merged")

    merged, _ = load_reward_model(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged(**ids).logits, expected, rtol=0, atol=1e-5)
    assert json.loads((tmp_path / "merged" / MODEL_INFO_FILE).read_text()) == info | {"adapter": False}


def test_a_full_model_is_written_out_as_it_is(tmp_path):
    model, tokenizer = tiny()
    info = {"kind": "causal_lm", "adapter": False, "base_model": "builtin:tiny-llama"}
    merge_checkpoint(save(tmp_path / "checkpoint", model, tokenizer, info), tmp_path / "out")
    loaded, _ = load_policy(tmp_path / "out")
    expected = model.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a model directory"):
        merge_checkpoint(tmp_path / "missing", tmp_path / "out")
    model, tokenizer = tiny()
    model_dir = save(tmp_path / "checkpoint", model, tokenizer, {"kind": "diffusion", "adapter": False})
    with pytest.raises(UserError, match="unknown kind 'diffusion'"):
        merge_checkpoint(model_dir, tmp_path / "out")
    write_model_info(model_dir, {"kind": "causal_lm", "adapter": False})
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match=str(model_dir)):
        merge_checkpoint(model_dir, tmp_path / "out")
