"""`rlhf jobs watch`: a live progress bar of a job from its stream, then an exit status from its outcome."""

import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from client.errors import ClientError
from client.http import Api
from client.output import console, duration, parse_time, print_json, size
from client.sse import Frame
from client.stream import follow, job_path, read_job

EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 2, "paused": 3}
# The metrics a bar shows, best first (labels short enough for one line); any four that arrive.
SHOWN = {"train/loss": "loss", "loss": "loss", "rewards/accuracies": "acc", "rewards/margins": "margin",
         "train/accuracy": "acc", "train/margin": "margin", "reward/mean": "reward", "objective/scores": "score",
         "objective/rlhf_reward": "rlhf reward", "objective/kl": "kl", "kl": "kl",
         "train/mean_token_accuracy": "token acc", "eval/loss": "eval loss"}
MAX_SHOWN = 4
JOB_REFRESH_SECONDS = 5.0


def exit_code(status: str) -> int:
    """0 succeeded, 1 failed, 2 cancelled, 3 paused (1 for anything else: the watch could not see an end)."""
    return EXIT_CODES.get(status, 1)


def metrics_text(values: dict[str, float]) -> str:
    """The job type's main metrics, `loss 0.6931  acc 0.5`, from whichever keys arrived."""
    picked, labels = [], set()
    for key, label in SHOWN.items():
        if key in values and label not in labels and len(picked) < MAX_SHOWN:
            picked.append(f"{label} {values[key]:.4g}")
            labels.add(label)
    if not picked:
        picked = [f"{key} {values[key]:.4g}" for key in sorted(values)[:3]]
    return "  ".join(picked)


class StepRate:
    """Steps per second from when steps arrive; a burst (catching up after a reconnect) counts as one point."""

    BURST, WINDOW = 0.05, 60.0

    def __init__(self) -> None:
        self.points: deque[tuple[float, int]] = deque()

    def add(self, at: float, step: int) -> None:
        if self.points and at - self.points[-1][0] < self.BURST:
            self.points[-1] = (at, step)
        else:
            self.points.append((at, step))
        while len(self.points) > 2 and at - self.points[0][0] > self.WINDOW:
            self.points.popleft()

    def per_second(self) -> float | None:
        if len(self.points) < 2:
            return None
        (t0, s0), (t1, s1) = self.points[0], self.points[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None


class EtaColumn(ProgressColumn):
    def __init__(self, view: "JobView") -> None:
        super().__init__()
        self.view = view

    def render(self, task: Task) -> Text:
        return Text(f"ETA {duration(self.view.eta_seconds())}", style="cyan")


class JobView:
    """What the watch knows of the job: the stream's frames, refreshed by reading the job now and then."""

    def __init__(self, api: Api, job: dict[str, Any], out: Console) -> None:
        self.api, self.job, self.out = api, job, out
        self.step = job.get("current_step") or 0
        self.values: dict[str, float] = {}
        self.rate = StepRate()
        self.read_at = time.monotonic()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[steps]}"),
                                 EtaColumn(self), TextColumn("{task.fields[metrics]}"), console=out,
                                 disable=not out.is_terminal)
        self.task = self.progress.add_task(self.describe(), total=job.get("total_steps"), completed=self.step,
                                           steps=self.steps(), metrics="")
        self.printed_at = 0.0

    def describe(self) -> str:
        return f"{self.job['id']} {self.job['type']} [bold]{self.job['status']}[/]"

    def steps(self) -> str:
        total = self.job.get("total_steps")
        return f"step {self.step}/{total}" if total else f"step {self.step}"

    def eta_seconds(self) -> float | None:
        if self.job.get("status") not in ("running", "cancelling", "pausing"):
            return None
        total = self.job.get("total_steps")
        finish = parse_time(self.job.get("estimated_finish"))
        if finish is not None:
            return (finish - datetime.now(UTC)).total_seconds()
        rate = self.job.get("steps_per_second") or self.rate.per_second()
        return (total - self.step) / rate if total and rate else None

    def line(self, text: str, style: str | None = None) -> None:
        """A line above the bar, which is brought up to date first (the line follows the steps before it)."""
        self.update()
        self.progress.console.print(text, style=style, soft_wrap=True, markup=False, highlight=False)

    def on_frames(self, frames: list[Frame]) -> None:
        for frame in frames:
            data = frame.data if isinstance(frame.data, dict) else {}
            if frame.event == "metrics":
                self.step = max(self.step, int(data.get("step", 0)))
                self.values = data.get("values") or self.values
            elif frame.event == "status":
                self.job["status"] = data.get("status", self.job["status"])
                self.line(f"status {data.get('status')}: {data.get('message', '')}",
                          "red" if data.get("status") == "failed" else None)
                self.read_at = 0.0  # read the job now: a run that starts sets its total_steps
            elif frame.event == "event":
                level = data.get("level", "info")
                self.line(f"{level}: {data.get('message', '')}", {"warning": "yellow", "error": "red"}.get(level))
            elif frame.event == "checkpoint":
                self.line(f"checkpoint {data.get('id')} at step {data.get('step')} ({size(data.get('size_bytes'))}, "
                          f"sha256 {str(data.get('sha256'))[:12]}...)", "green")
            # other events (samples, ...) are not shown
        now = time.monotonic()
        self.rate.add(now, self.step)
        if now - self.read_at > JOB_REFRESH_SECONDS:
            self.refresh()
        self.update()
        if not self.out.is_terminal and now - self.printed_at > 10 and self.values:
            self.printed_at = now
            self.line(f"{self.steps()}  {metrics_text(self.values)}")

    def refresh(self) -> None:
        self.read_at = time.monotonic()
        try:
            self.job = read_job(self.api, self.job["id"]) | {"status": self.job["status"]}
        except (httpx.TransportError, ClientError):  # the stream goes on; the next refresh may work
            return

    def update(self) -> None:
        self.progress.update(self.task, description=self.describe(), total=self.job.get("total_steps"),
                             completed=self.step, steps=self.steps(), metrics=metrics_text(self.values))


def watch(api: Api, job_id: str, *, quiet_json: bool = False) -> int:
    """Follow the job to its end (or pause) and return its exit status; with `quiet_json`, print the job as JSON."""
    job = api.get(job_path(job_id))
    out = Console(quiet=True) if quiet_json else console
    view = JobView(api, job, out)
    try:
        with view.progress:
            job = follow(api, job["id"], view.on_frames, lambda reason: view.line(f"{reason}; reconnecting", "yellow"))
            view.job, view.step = job, max(view.step, job.get("current_step") or 0)
            view.update()
    except KeyboardInterrupt:
        console.print(f"stopped watching; {job_id} goes on (rlhf jobs cancel {job_id} stops it)")
        return 130
    if quiet_json:
        print_json(job)
    else:
        summary(job, view.values)
    return exit_code(job["status"])


def summary(job: dict[str, Any], values: dict[str, float]) -> None:
    """The outcome: final step and metrics, the error of a failed job, how to resume a paused one."""
    total = job.get("total_steps")
    steps = f"step {job.get('current_step', 0)}/{total}" if total else f"step {job.get('current_step', 0)}"
    style = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "paused": "yellow"}.get(job["status"])
    console.print(f"{job['id']} {job['status']} at {steps}  {metrics_text(values)}".rstrip(), style=style,
                  soft_wrap=True, markup=False)
    error = job.get("error")
    if job["status"] == "failed" and error:
        param = f" ({error['param']})" if error.get("param") else ""
        console.print(f"error ({error.get('type')}){param}: {error.get('message')}", style="red", soft_wrap=True,
                      markup=False)
    elif job["status"] == "paused":
        console.print(f"resume it with: rlhf jobs resume {job['id']}", style="dim")
