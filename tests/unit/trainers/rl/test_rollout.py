from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tests.unit.trainers.trainer_fixtures import tiny
from trainers.rl.online import completion_seed, completion_seeds, select_rows
from trainers.rl.response_logprobs import SharedPromptLayout, response_logits, response_logprobs
from trainers.rl.rollout import generate, inverse_cdf_sample, left_pad, positions_from_mask, top_p_filter

PAD, BOS, EOS = 256, 257, 258
PROMPTS = [[BOS, 104, 105], [BOS, 97, 98, 99, 65, 66, 67], [BOS], [BOS, 120, 121, 122, 10]]
GREEDY = 1e-9  # top_p below any probability: only the most probable token survives


def naive_greedy(model, prompt, n):
    """Argmax decoding of one unpadded prompt, a full forward pass per token, no cache."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


def naive_top_p(logits, top_p):
    out = logits.clone()
    for row in range(logits.shape[0]):
        probs = torch.softmax(logits[row], -1).tolist()
        order = sorted(range(len(probs)), key=lambda v: -probs[v])
        kept, mass = set(), 0.0
        for v in order:
            kept.add(v)
            mass += probs[v]
            if mass >= top_p:
                break
        for v in range(len(probs)):
            if v not in kept:
                out[row, v] = float("-inf")
    return out


def sample(model, prompts=PROMPTS, seed=0, **kwargs):
    options = {"pad_token_id": PAD, "eos_token_id": EOS, "max_new_tokens": 10, "temperature": 1.0, "top_p": 1.0}
    options.update(kwargs)
    options.setdefault("generator", torch.Generator().manual_seed(seed))
    return generate(model, prompts, **options)


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.9, 0.999])
def test_top_p_filter_matches_the_naive_version(top_p):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 20, generator=g) * 2
    torch.testing.assert_close(top_p_filter(logits, top_p), naive_top_p(logits, top_p))


def test_top_p_edges():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert top_p_filter(logits, 1.0) is logits
    kept = torch.isfinite(top_p_filter(logits, GREEDY))
    assert kept.tolist() == [[False, True, False, False]]
    with pytest.raises(ValueError):
        top_p_filter(logits, 0.0)


def test_left_pad_and_positions():
    ids, mask = left_pad([[5, 6], [7]], pad_token_id=0)
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    assert positions_from_mask(torch.tensor([[0, 0, 1, 1, 1, 0]])).tolist() == [[0, 0, 0, 1, 2, 2]]
    with pytest.raises(ValueError):
        left_pad([[5], []], pad_token_id=0)


def test_greedy_equals_naive_argmax_decoding_of_each_prompt_alone():
    model, _ = tiny()
    rollout = sample(model, top_p=GREEDY, max_new_tokens=8)
    assert rollout.response_ids.shape == (len(PROMPTS), 8)
    for row, prompt in enumerate(PROMPTS):
        assert rollout.response_ids[row].tolist() == naive_greedy(model, prompt, 8)


def test_left_padding_does_not_change_a_sequence():
    model, _ = tiny()
    batched = sample(model, top_p=GREEDY, max_new_tokens=6)
    for row, prompt in enumerate(PROMPTS):
        alone = sample(model, prompts=[prompt], top_p=GREEDY, max_new_tokens=6)
        assert alone.prompt_ids.shape == (1, len(prompt))
        assert batched.response_ids[row].tolist() == alone.response_ids[0].tolist()
        torch.testing.assert_close(batched.logprobs[row], alone.logprobs[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (1.6, 0.5)])
def test_sampled_logprobs_equal_one_forward_recomputation(temperature, top_p):
    model, _ = tiny()
    rollout = sample(model, temperature=temperature, top_p=top_p, max_new_tokens=12)
    with torch.no_grad():
        recomputed = response_logprobs(model, rollout, temperature)
    assert recomputed.shape == rollout.logprobs.shape
    torch.testing.assert_close(recomputed, rollout.logprobs, rtol=0, atol=1e-5)
    assert rollout.temperature == temperature


def test_same_generator_state_gives_the_same_rollout_whatever_the_stop_check():
    model, _ = tiny()
    first = sample(model, seed=7, temperature=0.9)
    for interval in (0, 1, 3):
        again = sample(model, seed=7, temperature=0.9, stop_check_interval=interval)
        assert torch.equal(again.response_ids, first.response_ids)
        assert torch.equal(again.logprobs, first.logprobs)
    assert not torch.equal(sample(model, seed=8, temperature=0.9).response_ids, first.response_ids)


def test_eos_stops_a_row_and_masks_everything_after_it():
    model, _ = tiny()
    free = sample(model, top_p=GREEDY, max_new_tokens=10)
    row0 = free.response_ids[0].tolist()
    stop = row0[3]
    first = row0.index(stop)  # the row ends at the first occurrence of its stop token
    ended = sample(model, top_p=GREEDY, max_new_tokens=10, eos_token_id=[stop, EOS])

    for row in range(len(PROMPTS)):
        tokens = free.response_ids[row].tolist()
        n = tokens.index(stop) + 1 if stop in tokens else 10
        assert ended.response_lengths[row].item() == n
        assert ended.ended_with_eos[row].item() == (stop in tokens)
        assert ended.response_ids[row, :n].tolist() == tokens[:n]
        assert (ended.response_ids[row, n:] == PAD).all()
        assert ended.response_mask[row].tolist() == [1] * n + [0] * (ended.response_ids.shape[1] - n)
        assert (ended.logprobs[row, n:] == 0).all() and (ended.logprobs[row, :n] < 0).all()
    assert ended.response_lengths[0].item() == first + 1
    assert ended.last_token_positions().tolist() == (ended.prompt_ids.shape[1] + ended.response_lengths - 1).tolist()


def test_generation_stops_early_once_every_row_has_ended():
    model, _ = tiny()
    free = sample(model, prompts=PROMPTS[:1], top_p=GREEDY, max_new_tokens=8)
    stop = free.response_ids[0, 0].item()
    ended = sample(
        model, prompts=PROMPTS[:1], top_p=GREEDY, max_new_tokens=50, eos_token_id=stop, stop_check_interval=4
    )
    assert ended.response_ids.shape == (1, 1)  # trimmed to the longest response
    assert ended.ended_with_eos.tolist() == [True]


class FixedLogitsLM(nn.Module):
    """A stand-in causal LM whose next-token logits are always the same; it keeps no cache."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.anchor = nn.Parameter(torch.zeros(1))  # so generate can find the device

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None, logits_to_keep=0):
        B, T = input_ids.shape
        return SimpleNamespace(logits=self.logits.expand(B, T, -1), cache=None)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.5, 1.0), (2.0, 0.8)])
def test_samples_follow_the_tempered_nucleus_distribution(temperature, top_p):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    n = 20_000
    rollout = sample(
        FixedLogitsLM(logits),
        prompts=[[0]] * n,
        max_new_tokens=1,
        temperature=temperature,
        top_p=top_p,
        eos_token_id=99,
        pad_token_id=98,
    )
    expected = torch.softmax(naive_top_p((logits / temperature).unsqueeze(0), top_p)[0], -1)
    counts = torch.bincount(rollout.response_ids[:, 0], minlength=5).float() / n
    torch.testing.assert_close(counts, expected, rtol=0, atol=0.015)
    # the recorded log-probs are those of the tempered distribution, before top-p
    tempered = torch.log_softmax(logits / temperature, -1)
    torch.testing.assert_close(rollout.logprobs[:, 0], tempered[rollout.response_ids[:, 0]])


def test_generate_rejects_bad_settings():
    model, _ = tiny()
    with pytest.raises(ValueError, match="temperature"):
        sample(model, temperature=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sample(model, max_new_tokens=0)
    with pytest.raises(ValueError, match="exactly one"):
        sample(model, row_seeds=[0, 1, 2, 3])


def test_inverse_cdf_picks_the_token_whose_interval_holds_u_and_never_one_without_mass():
    probs = torch.tensor([[0.2, 0.0, 0.5, 0.3, 0.0]] * 6)
    uniforms = torch.tensor([0.0, 0.19, 0.2, 0.69, 0.71, 1 - 2**-53], dtype=torch.float64)
    assert inverse_cdf_sample(probs, uniforms).tolist() == [0, 0, 2, 2, 3, 3]
    unnormalised = torch.tensor([[0.0, 2.0, 0.0, 2.0, 0.0]])  # Σp = 4: u scales to the total
    assert inverse_cdf_sample(unnormalised.expand(2, -1), torch.tensor([0.49, 0.51])).tolist() == [1, 3]


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_rows_with_their_own_seeds_sample_the_same_tokens_in_any_batch(top_p):
    # A rank sampling some rows of a rollout draws what one process draws for them, whatever
    # rows sit beside them (other prompts, other lengths of padding).
    model, _ = tiny()
    prompts = GROUPED
    seeds = completion_seeds(7, 3, range(len(prompts)), 1)
    whole = sample(model, prompts=prompts, row_seeds=seeds, generator=None, top_p=top_p)
    for rows in ([0, 3, 6], [1, 2, 4, 5, 7], [5]):
        part = sample(model, prompts=[prompts[r] for r in rows], row_seeds=[seeds[r] for r in rows], generator=None,
                      top_p=top_p)  # fmt: skip
        width = part.response_ids.shape[1]
        assert part.response_ids.tolist() == whole.response_ids[rows, :width].tolist()
        assert part.response_lengths.tolist() == whole.response_lengths[rows].tolist()
        torch.testing.assert_close(part.logprobs, whole.logprobs[rows, :width], rtol=0, atol=1e-5)
    assert whole.response_ids[0].tolist() != whole.response_ids[1].tolist()  # a group's rows differ


def test_completion_seeds_differ_for_every_prompt_completion_rollout_and_job_seed():
    seeds = {completion_seed(s, r, p, g) for s in range(3) for r in range(3) for p in range(4) for g in range(4)}
    assert len(seeds) == 3 * 3 * 4 * 4 and all(0 <= s < 2**64 for s in seeds)
    assert completion_seeds(1, 2, [3, 5], 2) == [completion_seed(1, 2, p, g) for p in (3, 5) for g in (0, 1)]


GROUPED = [PROMPTS[1]] * 3 + [PROMPTS[0]] * 2 + [PROMPTS[3]] * 3  # GRPO's layout: each prompt's rows adjacent


def row_per_completion_logits(model, rollout):
    """`response_logits` in the layout of `Rollout.model_inputs`, one row per completion (the reference)."""
    input_ids, attention_mask, position_ids = rollout.model_inputs()
    A = rollout.response_ids.shape[1]
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=A + 1)
    return out.logits[:, :-1]


def test_repeated_prompts_are_prefilled_once_and_sample_what_each_row_would_alone():
    model, _ = tiny()
    grouped = sample(model, prompts=GROUPED, top_p=GREEDY, max_new_tokens=8)
    for row, prompt in enumerate(GROUPED):
        assert grouped.response_ids[row].tolist() == naive_greedy(model, prompt, 8)
    calls = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        rollout = sample(model, prompts=GROUPED, max_new_tokens=5, stop_check_interval=0)
    finally:
        hook.remove()  # the model is shared by the other tests
    assert calls[0] == (3, len(PROMPTS[1])) and calls[1:] == [(len(GROUPED), 1)] * 4  # 3 distinct prompts, then B rows
    with torch.no_grad():
        recomputed = response_logprobs(model, rollout, 1.0)
    torch.testing.assert_close(recomputed, rollout.logprobs, rtol=0, atol=1e-5)


def test_shared_prompt_layout_packs_each_prompt_once_with_its_completions():
    model, _ = tiny()
    rollout = sample(model, prompts=[PROMPTS[0], PROMPTS[1], PROMPTS[0]], max_new_tokens=4, seed=3)
    layout = SharedPromptLayout.of(rollout)
    lengths = rollout.response_lengths.tolist()
    P = len(PROMPTS[1])
    assert layout.input_ids.shape == (2, P + max(lengths[0] + lengths[2], lengths[1]))  # rows 0 and 2 share a prompt
    ids = layout.input_ids[0].tolist()
    short = len(PROMPTS[0])
    assert ids[P - short : P] == PROMPTS[0]
    assert ids[P : P + lengths[0]] == rollout.response_ids[0, : lengths[0]].tolist()
    assert ids[P + lengths[0] : P + lengths[0] + lengths[2]] == rollout.response_ids[2, : lengths[2]].tolist()
    positions = layout.position_ids[0].tolist()
    assert positions[P - short : P + lengths[0]] == list(range(short + lengths[0]))
    assert positions[P + lengths[0] : P + lengths[0] + lengths[2]] == list(range(short, short + lengths[2]))
    mask = layout.attention_mask[0, 0]
    second = P + lengths[0]  # the second completion sees the prompt and itself, never the first completion
    assert (
        mask[second, P - short : P].all() and not mask[second, P:second].any() and not mask[second, : P - short].any()
    )
    assert layout.keep == layout.input_ids.shape[1] - P + 1


def test_rows_without_a_shared_prompt_keep_the_row_per_completion_layout():
    model, _ = tiny()
    assert SharedPromptLayout.of(sample(model, max_new_tokens=4)) is None  # four different prompts


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompt_logits_and_gradients_equal_the_row_per_completion_layout(attention):
    model, _ = tiny()
    model = __import__("copy").deepcopy(model)
    model.config._attn_implementation = attention
    rollout = sample(model, prompts=GROUPED, max_new_tokens=9, seed=1, temperature=1.3)
    assert SharedPromptLayout.of(rollout) is not None
    mask = rollout.response_mask.bool()
    grads = []
    for logits_of in (
        lambda: response_logits(model, rollout, 1.3),
        lambda: row_per_completion_logits(model, rollout) / 1.3,
    ):
        model.zero_grad()
        logits = logits_of()
        assert logits.shape == (len(GROUPED), rollout.response_ids.shape[1], model.config.vocab_size)
        (logits.logsumexp(-1)[mask] * torch.linspace(0.5, 2.0, int(mask.sum()))).sum().backward()
        grads.append((logits.detach()[mask], [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=1e-5)
    for shared, alone in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(shared, alone, rtol=1e-4, atol=1e-6)


def test_a_subset_of_a_groups_rows_still_shares_its_prompt():
    model, _ = tiny()
    rollout = sample(model, prompts=GROUPED, max_new_tokens=6, seed=2)
    part = select_rows(rollout, [1, 2, 3, 4])  # two rows of the first prompt, two of the second
    assert SharedPromptLayout.of(part).input_ids.shape[0] == 2
    with torch.no_grad():
        torch.testing.assert_close(
            response_logprobs(model, part, 1.0),
            response_logprobs(model, rollout, 1.0)[1:5, : part.response_ids.shape[1]],
            rtol=0,
            atol=1e-5,
        )
