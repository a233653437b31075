"""The vllm backend's conversion of engine completions into the `Rollout` layout (no vllm needed).

The engine itself is checked against a real vLLM by scripts/test-vllm.sh, outside this suite.
"""

import torch

from trainers.rl.generation.vllm import rollout_from_completions

PAD, EOS, END_OF_TURN = 0, 9, 8


def test_completions_become_left_padded_prompts_and_right_padded_responses_with_eos_kept():
    rollout = rollout_from_completions(
        [[5, 6, 7], [4]],
        [[1, 2, EOS], [3, 3, 3, 3]],  # ends with EOS; cut at max_new_tokens
        [[-0.5, -1.0, -0.25], [-1.0, -2.0, -3.0, -4.0]],
        pad_token_id=PAD, stop_ids=[EOS, END_OF_TURN], temperature=0.7, device=torch.device("cpu"),
    )
    assert rollout.prompt_ids.tolist() == [[5, 6, 7], [PAD, PAD, 4]]
    assert rollout.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert rollout.response_ids.tolist() == [[1, 2, EOS, PAD], [3, 3, 3, 3]]
    assert rollout.response_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert rollout.logprobs.tolist() == [[-0.5, -1.0, -0.25, 0.0], [-1.0, -2.0, -3.0, -4.0]]
    assert rollout.logprobs.dtype == torch.float32
    assert rollout.ended_with_eos.tolist() == [True, False]
    assert rollout.response_lengths.tolist() == [3, 4]
    assert rollout.temperature == 0.7


def test_a_response_is_cut_after_its_first_stop_token_and_an_empty_one_is_all_padding():
    rollout = rollout_from_completions(
        [[5], [6]], [[1, END_OF_TURN, 2, EOS], []], [[-1.0, -2.0, -3.0, -4.0], []],
        pad_token_id=PAD, stop_ids=[EOS, END_OF_TURN], temperature=1.0, device=torch.device("cpu"),
    )
    assert rollout.response_ids.tolist() == [[1, END_OF_TURN], [PAD, PAD]]
    assert rollout.response_mask.tolist() == [[1, 1], [0, 0]]
    assert rollout.logprobs.tolist() == [[-1.0, -2.0], [0.0, 0.0]]
    assert rollout.ended_with_eos.tolist() == [True, False]
    assert rollout.response_lengths.tolist() == [2, 0]


def test_only_padding_responses_still_have_one_column():
    rollout = rollout_from_completions([[5]], [[]], [[]], pad_token_id=PAD, stop_ids=[EOS], temperature=1.0,
                                       device=torch.device("cpu"))
    assert rollout.response_ids.tolist() == [[PAD]]
    assert rollout.response_lengths.tolist() == [0]
