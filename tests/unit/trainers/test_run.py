"""`trainers.run` finds the trainer of every job type of the one union, and refuses any other."""

import importlib

import pytest

from trainers import TRAINERS, TrainingData, UserError, run
from trainers.spec.config import JOB_TYPES, DPOJob


def test_every_job_type_has_its_trainer():
    assert tuple(TRAINERS) == JOB_TYPES
    for job_type, (module, function) in TRAINERS.items():
        train = getattr(importlib.import_module(module), function)
        assert callable(train) and train.__name__ == f"train_{job_type}" and train.__module__ == module


def test_an_unknown_job_type_is_the_users_error():
    with pytest.raises(UserError) as info:
        run(DPOJob.model_construct(type="xpo", base_model="m"), TrainingData(train=[]))
    assert info.value.param == "type" and "xpo" in str(info.value)
