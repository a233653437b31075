"""`python -m client`: the same as the `rlhf` command."""

from client.cli import main

main()
