"""What the training fork server preloads must be safe to fork: imports only, nothing running."""

import json
import subprocess
import sys

from trainers import TRAINERS
from worker.launcher import PRELOAD

PROBE = """
import importlib, json, threading
from worker.launcher import PRELOAD
for name in PRELOAD:
    importlib.import_module(name)
import gc, sqlalchemy, torch
engines = sum(isinstance(o, sqlalchemy.engine.Engine) for o in gc.get_objects())
print(json.dumps({"threads": threading.active_count(), "engines": engines,
                  "cuda": torch.cuda.is_initialized(), "modules": sorted(PRELOAD)}))
"""


def test_the_preloaded_training_stack_starts_no_thread_engine_or_cuda():
    out = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True)
    state = json.loads(out.stdout.splitlines()[-1])
    # A thread or a database connection in the server would be copied, half-alive, into every
    # child; an initialised CUDA context cannot be used after a fork at all.
    assert state["threads"] == 1 and state["engines"] == 0 and state["cuda"] is False
    assert {"torch", "trainers.dpo", "trainers.grpo", "trainers.ppo", "trainers.models.reward",
            "worker.runner"} <= set(state["modules"])


def test_every_trainer_of_the_dispatch_table_is_preloaded():
    # a job of any type starts from a server that has already imported its trainer
    assert {module for module, _ in TRAINERS.values()} <= set(PRELOAD)
