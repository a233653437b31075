"""`Ranks` on one process and its shares, the launch command, and the strategy `auto` picks (no torchrun here)."""

import os
import subprocess
import sys

import pytest
import torch

from trainers.distributed import sharding
from trainers.distributed.launch import PARENT_ENV, RANK_PARENT_ENV, torchrun_command
from trainers.distributed.ranks import Ranks, launched_ranks
from trainers.distributed.sharding import resolve_strategy, training_state_bytes


def test_shares_split_every_item_once_and_an_empty_share_runs_one_row_with_no_weight():
    items = list(range(5))
    shares = [Ranks(rank=r, world_size=2).share(items) for r in range(2)]
    assert shares == [[0, 2, 4], [1, 3]]
    assert Ranks(rank=2, world_size=3).batch_share([7, 8]) == ([7], 0.0)  # rank 2 of 3 has no row of two
    assert Ranks(rank=1, world_size=3).batch_share([7, 8]) == ([8], 1.0)


def test_one_process_collectives_return_their_input():
    ranks = Ranks()
    t = torch.tensor([1.0, 2.0])
    assert not ranks.distributed and ranks.is_main and ranks.loss_scale == 1.0
    assert ranks.sum(t) is t and ranks.max(t) is t
    assert ranks.broadcast({"a": 1}) == {"a": 1} and ranks.gather(3) == [3]


def test_ranks_come_from_torchruns_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_ranks() == Ranks()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launched_ranks() == Ranks(rank=3, world_size=4, local_rank=1)


def test_one_node_rendezvous_on_a_free_port_and_several_nodes_need_an_endpoint():
    argv, env = torchrun_command(["-m", "worker.runner", "job"], processes=2)
    assert argv[1:3] == ["-m", "trainers.distributed.launch"] and "--standalone" in argv
    assert "--nproc-per-node=2" in argv and "--max-restarts=0" in argv and argv[-3:] == ["-m", "worker.runner", "job"]
    assert env == {PARENT_ENV: str(os.getpid())}
    argv, _ = torchrun_command(["x.py"], processes=1, nodes=2, node_rank=1, rendezvous="10.0.0.1:29400", run_id="j")
    assert {"--nnodes=2", "--node-rank=1", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29400",
            "--rdzv-id=j"} <= set(argv) and "--standalone" not in argv
    with pytest.raises(ValueError, match="rendezvous"):
        torchrun_command(["x.py"], processes=1, nodes=2)


def test_the_agent_exits_at_once_when_its_parent_is_already_gone():
    # The parent named in the environment is not the agent's parent (this test process is): the
    # agent takes itself for an orphan and exits before starting torchrun.
    done = subprocess.run([sys.executable, "-m", "trainers.distributed.launch", "--standalone",
                           "--nproc-per-node=1", "--no-python", "true"],
                          env=os.environ | {PARENT_ENV: "1"}, capture_output=True, timeout=60)
    assert done.returncode == 128 + 9
    done = subprocess.run([sys.executable, "-c", "from trainers.distributed.ranks import init_ranks; init_ranks()"],
                          env=os.environ | {RANK_PARENT_ENV: "1"}, capture_output=True, timeout=60)
    assert done.returncode == 128 + 9  # a rank whose launcher is gone exits as well


def test_auto_shards_only_what_does_not_fit_one_device(monkeypatch):
    model = torch.nn.Linear(1000, 1000)  # ~1M parameters: 4 MB of weights, 12 MB of gradients and moments
    assert training_state_bytes(model) == 1_001_000 * 16
    two = Ranks(rank=0, world_size=2)
    assert resolve_strategy("auto", model, Ranks(), torch.device("cpu")) is None
    assert resolve_strategy("fsdp", model, two, torch.device("cpu")) == "fsdp"
    assert resolve_strategy("auto", model, two, torch.device("cpu")) == "ddp"
    monkeypatch.setattr(sharding, "device_memory_bytes", lambda device: 2 * 16_016_000 - 1)  # just under twice
    assert resolve_strategy("auto", model, two, torch.device("cpu")) == "fsdp"
