"""`ModelOps` in an API process that holds many connections: its pipes number past 1024."""

import os

from api.services import modelops
from tests.support import descriptors_past_select_limit


def test_the_model_process_answers_when_its_pipes_number_past_1024():
    with descriptors_past_select_limit():
        ops = modelops.ModelOps(cache_bytes=10**9, idle_seconds=600)
        try:
            stats = modelops.stats(ops, timeout=120)
            assert stats["pid"] == ops.pid and stats["pid"] != os.getpid()
            assert ops._proc.stdout.fileno() > 1024
        finally:
            ops.close()
