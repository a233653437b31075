"""One rank of a test job: ``python rank_program.py JOB.json DATA.json OUT [RESUME_DIR]`` (under torchrun, or alone).

Trains `trainers.run` on the job and data files; rank 0 writes ``OUT/metrics.json`` (step → metrics),
``OUT/result.json`` and ``OUT/checkpoint-<step>/``; every rank writes the samples it was given,
``OUT/samples-<rank>.json`` (step → rows).
"""

import json
import os
import sys
from pathlib import Path

import trainers
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import JOB_MODELS_BY_TYPE


class Recorder(Callbacks):
    def __init__(self, out: Path):
        self.out, self.metrics, self.events, self.samples = out, {}, [], {}

    def on_metrics(self, step, metrics):
        self.metrics[step] = metrics

    def on_samples(self, step, rows):
        self.samples[step] = rows

    def on_checkpoint(self, step, save, info):
        directory = self.out / f"checkpoint-{step}"
        directory.mkdir(parents=True, exist_ok=True)
        save(directory)
        (directory / "info.json").write_text(json.dumps(info))

    def on_event(self, level, message):
        self.events.append([level, message])


def main(argv: list[str]) -> None:
    spec, data, out = json.loads(Path(argv[1]).read_text()), json.loads(Path(argv[2]).read_text()), Path(argv[3])
    job = JOB_MODELS_BY_TYPE[spec["type"]].model_validate(spec)
    recorder = Recorder(out)
    result = trainers.run(job, trainers.TrainingData(**data), recorder, resume_from=argv[4] if len(argv) > 4 else None)
    (out / f"samples-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(recorder.samples))
    if int(os.environ.get("RANK", "0")) == 0:
        (out / "metrics.json").write_text(json.dumps(recorder.metrics))
        (out / "events.json").write_text(json.dumps(recorder.events))
        (out / "result.json").write_text(json.dumps({"status": result.status, "step": result.step,
                                                     "metrics": result.metrics}))


if __name__ == "__main__":
    main(sys.argv)
