"""The grader dry run under hostile input: linear-time patterns, patterns the engine refuses, slow functions."""

import threading

import pytest

from trainers.spec import graders

CATASTROPHIC = r"(a+)+$"  # exponential time in a backtracking engine
REGEX = {"type": "string_check", "name": "r", "operation": "regex", "reference": CATASTROPHIC}


def dry_run(client, reward, completion, item=None):
    return client.post("/v1/graders/run", json={"reward": reward, "completion": completion, "item": item or {}})


@pytest.mark.timeout(60)
def test_a_catastrophic_pattern_is_graded(client):
    r = dry_run(client, REGEX, "a" * 30 + "!")
    assert r.status_code == 200, r.text
    assert r.json() == {"reward": 0.0, "per_grader": {"r": 0.0}, "errors": []}
    assert dry_run(client, REGEX, "a" * 100_000).json()["reward"] == 1.0
    from_row = {**REGEX, "reference": "{{item.pattern}}"}
    assert dry_run(client, from_row, "a" * 30 + "!", {"pattern": CATASTROPHIC}).json()["reward"] == 0.0
    fmt = {"type": "format", "name": "f", "pattern": "(a+)+"}
    assert dry_run(client, fmt, "a" * 99_999 + "!").json()["reward"] == 0.0


def test_a_pattern_the_engine_refuses_is_422_naming_the_field(client):
    r = dry_run(client, {**REGEX, "reference": r"(a)\1"}, "aa")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == "reward.reference" and "invalid escape sequence" in error["message"]
    multi = {"type": "multi", "name": "m", "graders": [REGEX, {"type": "format", "name": "f", "pattern": "(?=a)a"}]}
    r = dry_run(client, multi, "aa")
    assert r.status_code == 422 and r.json()["error"]["param"] == "reward.graders[1].pattern", r.text
    # a pattern from the row exists only per row: the engine's refusal is that row's grader error
    r = dry_run(client, {**REGEX, "reference": "{{item.pattern}}"}, "aa", {"pattern": r"(a)\1"})
    assert r.status_code == 200 and "invalid escape sequence" in r.json()["errors"][0], r.text


@pytest.mark.timeout(60)
def test_a_slow_reward_function_is_a_grader_error_and_blocks_no_other_request(client, monkeypatch):
    entered, release = threading.Event(), threading.Event()

    def slow(completion, item):
        entered.set()
        release.wait(30)
        return 1.0

    client.app.state.reward_registry["site.slow"] = slow
    reward = {"type": "multi", "name": "m", "graders": [
        {"type": "function", "name": "slow", "function": "site.slow"},
        {"type": "length", "name": "short", "max_chars": 10}]}
    monkeypatch.setattr(graders, "GRADER_TIMEOUT_S", 0.5)
    try:
        r = dry_run(client, reward, "tiny")
        assert r.status_code == 200, r.text
        assert r.json() == {"reward": 1.0, "per_grader": {"slow": 0.0, "short": 1.0},
                            "errors": ["slow: reward function 'site.slow' did not return within 0.5 s"]}

        monkeypatch.setattr(graders, "GRADER_TIMEOUT_S", 30)
        entered.clear()
        answers = []
        running = threading.Thread(target=lambda: answers.append(dry_run(client, reward, "tiny")))
        running.start()
        assert entered.wait(30)
        assert client.get("/healthz").status_code == 200  # while the dry run waits on its function
        release.set()
        running.join(30)
        assert answers[0].status_code == 200 and answers[0].json()["reward"] == 2.0
    finally:
        release.set()


def test_text_similarity_is_graded_and_a_field_the_item_lacks_is_a_grader_error(client):
    sim = {"type": "text_similarity", "name": "sim", "evaluation_metric": "rouge_1", "reference": "{{item.answer}}"}
    r = dry_run(client, sim, "the cat is on the mat", {"answer": "the cat sat on the mat"})
    assert r.status_code == 200, r.text
    assert r.json()["reward"] == pytest.approx(5 / 6) and r.json()["errors"] == []
    r = dry_run(client, {**sim, "pass_threshold": 0.9}, "the cat is on the mat", {"answer": "the cat sat on the mat"})
    assert r.json()["reward"] == 0.0
    r = dry_run(client, sim, "the cat", {"question": "?"})
    assert r.status_code == 200, r.text
    assert r.json() == {"reward": 0.0, "per_grader": {"sim": 0.0},
                        "errors": ["sim: {{item.answer}}: the prompt row has no field item.answer"]}


def test_a_metric_not_offered_is_422_at_evaluation_metric(client):
    sim = {"type": "text_similarity", "name": "sim", "evaluation_metric": "cosine", "reference": "x"}
    multi = {"type": "multi", "name": "m", "graders": [{"type": "length", "name": "l", "max_chars": 9}, sim]}
    r = dry_run(client, multi, "x")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == "reward.graders[1].evaluation_metric" and "embedding model" in error["message"]


def test_a_formula_combines_the_scores_and_an_unknown_name_is_422(client):
    graders = [{"type": "string_check", "name": "correct", "operation": "eq", "reference": "{{item.answer}}"},
               {"type": "length", "name": "fmt", "max_chars": 4}]
    multi = {"type": "multi", "name": "m", "graders": graders, "calculate_output": "0.7 * correct + 0.3 * min(1, fmt)"}
    r = dry_run(client, multi, "4", {"answer": "4"})
    assert r.status_code == 200 and r.json()["reward"] == pytest.approx(1.0), r.text
    r = dry_run(client, {**multi, "calculate_output": "correct / (fmt - 1)"}, "4", {"answer": "4"})
    assert r.status_code == 200, r.text
    assert r.json()["reward"] == 0.0 and r.json()["errors"][0].startswith("m: calculate_output: ZeroDivisionError")
    r = dry_run(client, {**multi, "calculate_output": "correct + fmtt"}, "4", {"answer": "4"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "reward.calculate_output" and "'fmtt'" in r.json()["error"]["message"]
    r = dry_run(client, {**multi, "calculate_output": "__import__('os').system('true')"}, "4", {"answer": "4"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "reward.calculate_output", r.text
