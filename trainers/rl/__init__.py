"""What PPO and GRPO share: rollouts, the rewards of completions, the PPO-ptx text loss."""
