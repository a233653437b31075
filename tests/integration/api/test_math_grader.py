"""The built-in `math_answer` reward function through the grader dry run: GSM8K answers, LaTeX, its deadline."""

import pytest

from trainers.spec import graders

GSM8K_ITEM = {"question": "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
                          "muffins for her friends every day with four. She sells the remainder at the farmers' "
                          "market daily for $2 per fresh duck egg. How much in dollars does she make every day?",
              "answer": "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 "
                        "every day at the farmer's market.\n#### 18"}  # fmt: skip
MATH = {"type": "function", "name": "math", "function": "math_answer"}


def dry_run(client, reward, completion, item):
    r = client.post("/v1/graders/run", json={"reward": reward, "completion": completion, "item": item})
    assert r.status_code == 200, r.text
    return r.json()


def test_gsm8k_completions_score_by_their_final_answer(client):
    completions = ["16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars.\n#### 18", "She makes $\\boxed{18}$ dollars.",
                   "the answer is 18.0", "17"]
    results = [dry_run(client, MATH, c, GSM8K_ITEM) for c in completions]
    assert [r["reward"] for r in results] == [1.0, 1.0, 1.0, 0.0]
    assert [r["errors"] for r in results] == [[]] * 4
    # kwargs name the column; symbolic answers compare by value
    latex = {**MATH, "kwargs": {"field": "solution"}}
    assert dry_run(client, latex, "So $x = \\sqrt{8}$", {"solution": "2\\sqrt{2}"})["reward"] == 1.0
    assert dry_run(client, latex, "\\boxed{0.5}", {"solution": "\\frac{1}{2}"})["reward"] == 1.0
    assert dry_run(client, latex, "\\boxed{0.5}", {"solution": "\\frac{1}{3}"})["reward"] == 0.0


def test_it_is_listed_as_built_in_and_its_kwargs_are_checked(client):
    r = client.post("/v1/graders/run", json={"reward": {**MATH, "function": "math_answers"}, "completion": "1",
                                             "item": {}})  # fmt: skip
    assert r.status_code == 422, r.text
    assert "math_answer" in r.json()["error"]["message"].split("this server offers: ")[1].split(", ")
    r = client.post("/v1/graders/run", json={"reward": {**MATH, "kwargs": {"column": "answer"}}, "completion": "1",
                                             "item": {}})  # fmt: skip
    assert r.status_code == 422 and "does not take these kwargs" in r.json()["error"]["message"], r.text


@pytest.mark.timeout(60)
def test_a_comparison_past_the_deadline_is_a_grader_error(client, monkeypatch):
    monkeypatch.setattr(graders, "GRADER_TIMEOUT_S", 0.5)
    # SymPy spends seconds (pure Python, so the deadline ends the wait) on this identity check
    slow = dry_run(client, MATH, "\\boxed{1}", {"answer": "\\sin(x)^{200}+\\cos(x)^{200}"})
    assert slow == {"reward": 0.0, "per_grader": {"math": 0.0},
                    "errors": ["math: reward function 'math_answer' did not return within 0.5 s"]}
    # an answer whose exact value would be computed in C for minutes is never computed: a quick 0
    assert dry_run(client, MATH, "\\boxed{9^{9^{9^{9}}}}", GSM8K_ITEM) == {"reward": 0.0,
                                                                          "per_grader": {"math": 0.0}, "errors": []}
