"""Train a job on N processes under torchrun (through `trainers.distributed.launch`) from a test."""

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.unit.trainers.distributed import rank_program
from trainers.distributed.launch import torchrun_command

PROGRAM = Path(__file__).with_name("rank_program.py")
ROOT = Path(__file__).resolve().parents[4]


def rank_command(job: dict[str, Any], data: dict[str, Any], out: Path, *, processes: int,
                 resume_from: Path | None = None, **launch: Any) -> tuple[list[str], dict[str, str]]:
    """The command and environment that train `job` on `data` as `processes` ranks, recording into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps(job | {"processes": processes * launch.get("nodes", 1)}))
    (out / "data.json").write_text(json.dumps(data))
    program = [str(PROGRAM), str(out / "job.json"), str(out / "data.json"), str(out)]
    if resume_from is not None:
        program.append(str(resume_from))
    argv, env = torchrun_command(program, processes=processes, **launch)
    return argv, os.environ | env | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def train_in_ranks(job: dict[str, Any], data: dict[str, Any], out: Path, *, processes: int,
                   resume_from: Path | None = None, timeout: float = 300) -> dict[str, Any]:
    """Train and return rank 0's record: ``{"metrics": {step: {...}}, "result": {...}, "events": [...]}``.

    One process runs the program in this process (no torchrun); several run under torchrun. A
    failure raises with the ranks' output.
    """
    if processes == 1:  # in this process: the same program, without paying for the imports again
        out.mkdir(parents=True, exist_ok=True)
        (out / "job.json").write_text(json.dumps(job | {"processes": 1}))
        (out / "data.json").write_text(json.dumps(data))
        argv = [str(PROGRAM), str(out / "job.json"), str(out / "data.json"), str(out)]
        rank_program.main(argv + ([str(resume_from)] if resume_from is not None else []))
        return read_record(out)
    argv, env = rank_command(job, data, out, processes=processes, resume_from=resume_from)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"training on {processes} processes failed ({done.returncode}):\n{done.stderr[-6000:]}")
    return read_record(out)


def read_record(out: Path) -> dict[str, Any]:
    """What rank 0 wrote into `out`: metrics by step (int keys), the result and the events."""
    metrics = {int(step): values for step, values in json.loads((out / "metrics.json").read_text()).items()}
    return {"metrics": metrics, "result": json.loads((out / "result.json").read_text()),
            "events": json.loads((out / "events.json").read_text())}
