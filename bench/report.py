"""Print bench/results.json as the Markdown tables of bench/RESULTS.md.

    .venv/bin/python bench/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS_JSON = Path(__file__).resolve().parent / "results.json"
ALGOS = ("dpo", "reward_model", "grpo", "ppo")


def _num(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if abs(value) >= 1e6:
        return f"{value:.3g}"
    if abs(value) < 1e-3 and value:
        return f"{value:.2e}"
    return f"{value:.4g}"


def main() -> None:
    entries = {e["name"]: e for e in json.loads(RESULTS_JSON.read_text())}
    for algo in ALGOS:
        rows = [e for name, e in entries.items() if name.startswith(f"{algo}/")]
        if not rows:
            continue
        first = rows[0]
        print(f"\n### {algo} (TRL {first.get('trl_version')}, ours at {first.get('ours_commit')})\n")
        print(f"`{first['command']}`\n")
        print("| figure | ours | TRL | ours / TRL | runs (ours; TRL) |\n|---|---|---|---|---|")
        for e in rows:
            runs = ""
            if "ours_runs" in e:
                runs = ", ".join(_num(v) for v in e["ours_runs"]) + "; " + ", ".join(_num(v) for v in e["trl_runs"])
            units = f" ({e['units']})" if e["units"] else ""
            print(f"| {e['name'].partition('/')[2]}{units} | {_num(e['ours'])} | {_num(e['trl'])} | "
                  f"{_num(e['ratio'])} | {runs} |")  # fmt: skip
    parity = [e for name, e in entries.items() if name.startswith("parity/")]
    if parity:
        print("\n### parity\n\n| check | ours | TRL | max abs diff | result |\n|---|---|---|---|---|")
        for e in parity:
            result = "pass" if e["pass"] else "FAIL"
            print(f"| {e['name'].partition('/')[2]} | {_num(e['ours'])} | {_num(e['trl'])} | "
                  f"{_num(e['max_abs_diff'])} | {result} |")  # fmt: skip
    service = [e for name, e in entries.items() if name.startswith("service/")]
    if service:
        print(f"\n### service\n\n`{service[0]['command']}`\n\n| figure | value |\n|---|---|")
        for e in service:
            print(f"| {e['name'].partition('/')[2]} | {_num(e['ours'])} {e['units']} |")


if __name__ == "__main__":
    main()
