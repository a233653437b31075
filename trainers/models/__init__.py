"""Models and their files: loading, the built-in tiny model, LoRA, reward and value models,
checkpoints, export and scoring."""
