"""`rlhf`: upload datasets, create, watch and control jobs, and download checkpoints from the command line.

The API's address is RLHF_BASE_URL (default http://127.0.0.1:8000) or --base-url; the key is
--api-key, else RLHF_API_KEY, else the file var/api-key of the current directory (the one the
service writes on its first start).

\b
Exit status:
  0  done (`jobs watch`: the job succeeded)
  1  the API refused the request or could not be reached (`jobs watch`: the job failed)
  2  a bad command line or job spec, found before anything is sent (`jobs watch`: the job was cancelled)
  3  `jobs watch`: the job was paused
"""

import click

from client import checkpoints, datasets, jobs
from client.config import ConfigError, resolve
from client.errors import ClientError
from client.http import Api


@click.group(help=__doc__, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--base-url", metavar="URL", help="The API's address [default: RLHF_BASE_URL, or http://127.0.0.1:8000].")
@click.option("--api-key", metavar="KEY", help="A project's API key [default: RLHF_API_KEY, or var/api-key].")
@click.pass_context
def cli(ctx: click.Context, base_url: str | None, api_key: str | None) -> None:
    try:
        api = Api(resolve(base_url=base_url, api_key=api_key))
    except ConfigError as exc:
        raise ClientError(str(exc)) from None
    ctx.call_on_close(api.close)
    ctx.obj = api


cli.add_command(datasets.group)
cli.add_command(jobs.group)
cli.add_command(checkpoints.group)


def main() -> None:
    cli(prog_name="rlhf")
