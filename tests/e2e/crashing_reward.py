"""A reward function that crashes the process calling it, as broken native code in a grader would."""

import os
import sys

from trainers.spec.reward_functions import reward_function

LAST_WORDS = "crashing_reward: the grader's native library aborted"


@reward_function("test.crash")
def crash(completion: str, item: dict) -> float:
    print(LAST_WORDS, file=sys.stderr, flush=True)
    os.abort()
