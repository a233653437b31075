"""`rlhf`: the command-line client of the service's REST API (datasets, jobs, the live stream, checkpoints).

It talks HTTP only. The job flags are generated from the API's own request models (`api.schemas`),
imported when a `jobs create` command is built, so the other commands start without them.
"""
