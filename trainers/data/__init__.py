"""Dataset rows to token batches: preference pairs, prompts, length grouping, synthetic rows."""
