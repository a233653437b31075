"""`rlhf jobs`: create (one command per job type), list, get, watch, cancel, pause, resume."""

import click

from client import watch as watching
from client.http import Api
from client.output import (
    console,
    eta,
    fields,
    json_option,
    one_format,
    print_json,
    printed_plainly,
    progress,
    quiet_option,
    table,
    when,
)
from client.stream import job_path


class JobTypes(click.Group):
    """The `create` commands, built from the API's request models only when one is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from client.job_flags import MODELS

        return list(MODELS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from client.job_create import create_command

        return create_command(cmd_name)


@click.group("jobs")
def group() -> None:
    """Create, follow and control training jobs."""


@group.group(cls=JobTypes, short_help="Create a job: one command per job type, its flags from the API's schema.")
def create() -> None:
    """Create a job: `rlhf jobs create dpo --base-model builtin:tiny-llama --dataset-id ds_... --beta 0.2`.

    Each job type is a command whose flags are the fields of its request body and of its
    hyperparameters, with the API's descriptions and defaults (`rlhf jobs create dpo --help`).
    """


@group.command("list")
@click.option("--status", help="Only jobs in this status (queued, running, paused, succeeded, failed, ...).")
@click.option("--type", "type_", metavar="TYPE", help="Only jobs of this type (dpo, grpo, ...).")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many, newest first.")
@json_option
@quiet_option
@click.pass_obj
def list_(api: Api, status: str | None, type_: str | None, limit: int, as_json: bool, quiet: bool) -> None:
    """List jobs, newest first."""
    one_format(as_json, quiet)
    params = {"limit": limit} | ({"status": status} if status else {}) | ({"type": type_} if type_ else {})
    page = api.get("/v1/jobs", params=params)
    if printed_plainly(page, as_json, quiet):
        return
    table(("id", "type", "status", "model", "progress", "ETA"),
          ((j["id"], j["type"], j["status"], j["base_model"], progress(j), eta(j)) for j in page["data"]))


@group.command()
@click.argument("job_id")
@json_option
@click.pass_obj
def get(api: Api, job_id: str, as_json: bool) -> None:
    """Show one job: status, progress, error and resolved settings."""
    job = api.get(job_path(job_id))
    if as_json:
        print_json(job)
        return
    error = job.get("error") or {}
    fields([("id", job["id"]), ("type", job["type"]), ("status", job["status"]), ("name", job.get("name")),
            ("base model", job["base_model"]), ("dataset", job["dataset_id"]),
            ("eval dataset", job.get("eval_dataset_id")), ("progress", progress(job)), ("ETA", eta(job)),
            ("error", f"{error.get('type')}: {error.get('message')}" if error else None),
            ("created", when(job.get("created_at"))), ("started", when(job.get("started_at"))),
            ("finished", when(job.get("finished_at"))), ("hyperparameters", job.get("hyperparameters")),
            ("lora", job.get("lora")), ("reward", job.get("reward")), ("metadata", job.get("metadata"))])


@group.command(short_help="Follow a job live; the exit status says how it ended.")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="No live display: print the final job as JSON.")
@click.pass_obj
def watch(api: Api, job_id: str, as_json: bool) -> None:
    """Follow a job live until it ends or pauses: steps, main metrics, ETA, events and checkpoints.

    \b
    Exit status:
      0  the job succeeded
      1  the job failed (its error is printed), or the API refused or could not be reached
      2  the job was cancelled
      3  the job was paused (resume it with `rlhf jobs resume`)
    """
    raise SystemExit(watching.watch(api, job_id, quiet_json=as_json))


def _control(action: str, short: str, doc: str) -> click.Command:
    @click.argument("job_id")
    @json_option
    @click.pass_obj
    def command(api: Api, job_id: str, as_json: bool) -> None:
        job = api.post(f"{job_path(job_id)}/{action}")
        if as_json:
            print_json(job)
        else:
            console.print(f"{job['id']}  {job['status']}")

    return click.command(action, help=doc, short_help=short)(command)


group.add_command(_control("cancel", "Cancel a job.",
                           "Cancel a job: a queued or paused one at once, a running one at its next step."))
group.add_command(_control("pause", "Pause a job.",
                           "Pause a job: it stops at its next step with a checkpoint to resume from."))
group.add_command(_control("resume", "Resume a paused job.", "Resume a paused job from its latest checkpoint."))
