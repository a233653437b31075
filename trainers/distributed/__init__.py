"""One job over several processes: torchrun ranks, FSDP2 (``ddp`` and ``fsdp``), rank-0 reporting.

- `ranks`: which process this is and the collectives the trainers use (`Ranks`, `init_ranks`).
- `sharding`: `fully_shard` of the trained model, and the full state behind every checkpoint.
- `callbacks`: `RankCallbacks`, through which rank 0 alone reports and the stop is agreed.
- `launch`: the torchrun command line, with ranks that die with whoever started them.
"""
