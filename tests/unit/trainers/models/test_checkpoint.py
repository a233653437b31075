"""Checkpoints describe their model (rlhf_service.json, info["model"]) and probe any model kind."""

import json

import torch
from transformers import LlamaForSequenceClassification

from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, tiny
from trainers.loop import build_optimizer
from trainers.models.checkpoint import (
    MODEL_DIR,
    MODEL_INFO_FILE,
    PROBE_TEXT,
    offer_checkpoint,
    probe_logits,
    read_model_info,
)
from trainers.spec.config import LoopHyperparameters

INFO = {"kind": "causal_lm", "adapter": False, "base_model": "builtin:tiny-llama"}


def test_offered_checkpoint_carries_and_writes_the_model_info(tmp_path):
    model, tokenizer = tiny()
    optimizer, scheduler = build_optimizer([torch.nn.Parameter(torch.zeros(1))], LoopHyperparameters())
    callbacks = RecordingCallbacks(tmp_path)

    offer_checkpoint(callbacks, 7, model=model, tokenizer=tokenizer, optimizer_state=optimizer.state_dict(),
                     scheduler=scheduler,
                     metrics={"train/loss": 0.5}, data_position={"steps_done": 7}, job={}, model_info=INFO)  # fmt: skip

    directory, info = callbacks.checkpoints[7]
    assert info["model"] == INFO and info["metrics"] == {"train/loss": 0.5}
    written = directory / MODEL_DIR / MODEL_INFO_FILE
    assert json.loads(written.read_text()) == INFO == read_model_info(directory / MODEL_DIR)
    assert read_model_info(tmp_path) is None


def test_probe_of_a_sequence_classifier_is_its_label_logits_in_eval_mode_without_gradients():
    causal, tokenizer = tiny()
    config = type(causal.config).from_dict(causal.config.to_dict() | {"num_labels": 3})
    model = LlamaForSequenceClassification(config).train()
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append((module.training, torch.is_grad_enabled())))

    probe = probe_logits(model, tokenizer)

    assert seen == [(False, False)] and model.training  # eval mode and no graph, then train mode again
    ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.eval()(input_ids=ids).logits[0]  # (num_labels,)
    assert len(probe) == 3
    torch.testing.assert_close(torch.tensor(probe), expected, rtol=0, atol=1e-6)
