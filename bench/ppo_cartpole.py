"""PPO on CartPole-v1 with the library's own math: a check that `gae`, `whiten`,
`clipped_policy_loss` and `clipped_value_loss` solve a classic control task.

The language-model trainers call the same functions on (B, A) response tokens. Here each
episode fragment collected by an environment is one row and its time steps are the "tokens":
rows are right-padded and masked, as responses are. A fragment cut by the time limit or by the
end of the rollout is not over, so its last reward carries the bootstrap ``γ·V(s_next)`` (the
library's GAE takes the value after a row's last position as 0, which is right for a terminated
episode and for a response ended by EOS).

Hyperparameters follow rl-baselines3-zoo's tuned PPO for CartPole-v1 (8 environments × 32 steps,
20 epochs, γ = 0.98, λ = 0.8, learning rate and clip range decayed linearly to 0).
https://github.com/DLR-RM/rl-baselines3-zoo/blob/master/hyperparams/ppo.yml

    python bench/ppo_cartpole.py [--seed 1] [--total-steps 100000]

Needs gymnasium (a bench extra, not a runtime dependency).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from trainers.ops.advantages import gae, whiten  # noqa: E402
from trainers.ops.policy_losses import clipped_policy_loss, clipped_value_loss, loss_normalizer  # noqa: E402

SOLVED = 475.0  # CartPole-v1's reward threshold


@dataclass
class Hyperparameters:
    n_envs: int = 8
    n_steps: int = 32  # per environment per rollout
    total_steps: int = 100_000
    epochs: int = 20
    minibatch_size: int = 256  # = one rollout: one minibatch per epoch
    learning_rate: float = 1e-3  # decayed linearly to 0
    clip: float = 0.2  # ε of the policy ratio, decayed linearly to 0
    value_clip: float = 10.0  # ε_v: returns reach ~50 (γ = 0.98); at 0.2 the critic lags and some seeds stall
    gamma: float = 0.98
    lam: float = 0.8
    value_coef: float = 0.5
    max_grad_norm: float = 0.5


def mlp(out_features: int, out_std: float) -> nn.Sequential:
    """Two tanh layers of 64 with orthogonal initialisation (the "implementation details" of PPO:
    https://iclr-blog-track.github.io/2022/03/25/ppo-implementation-details/)."""
    layers = [nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, out_features)]
    for layer, std in zip(layers[::2], (2**0.5, 2**0.5, out_std), strict=True):
        nn.init.orthogonal_(layer.weight, std)
        nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.actor = mlp(2, 0.01)  # near-uniform first policy
        self.critic = mlp(1, 1.0)

    def value(self, obs: Tensor) -> Tensor:
        return self.critic(obs).squeeze(-1)  # (N,)

    def logprobs(self, obs: Tensor) -> Tensor:
        return torch.log_softmax(self.actor(obs), dim=-1)  # (N, 2)


def segments_of(dones: list[list[bool]]) -> list[list[tuple[int, int]]]:
    """Split each environment's steps into episode fragments: lists of (step, env) indices."""
    n_steps, n_envs = len(dones), len(dones[0])
    segments = []
    for env in range(n_envs):
        current = []
        for step in range(n_steps):
            current.append((step, env))
            if dones[step][env]:
                segments.append(current)
                current = []
        if current:
            segments.append(current)
    return segments


def train(seed: int, hp: Hyperparameters) -> tuple[ActorCritic, list[float]]:
    torch.manual_seed(seed)
    sampler = torch.Generator().manual_seed(seed)
    envs = [gym.make("CartPole-v1") for _ in range(hp.n_envs)]
    obs = torch.tensor(np.stack([env.reset(seed=seed * 1000 + i)[0] for i, env in enumerate(envs)]))  # (E, 4)
    model = ActorCritic()
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.learning_rate, eps=1e-5)
    episode_returns, running = [], [0.0] * hp.n_envs
    n_updates = hp.total_steps // (hp.n_envs * hp.n_steps)

    for update in range(n_updates):
        progress_left = 1 - update / n_updates
        for group in optimizer.param_groups:
            group["lr"] = hp.learning_rate * progress_left
        clip = hp.clip * progress_left

        # 1. rollout: n_steps in each environment, resetting finished episodes on the spot
        steps_obs, actions, logps, values, rewards, dones = [], [], [], [], [], []
        bootstrap = {}  # (step, env) → V(s_next) for fragments that end without terminating
        with torch.no_grad():
            for step in range(hp.n_steps):
                logp_all = model.logprobs(obs)  # (E, 2)
                action = torch.multinomial(logp_all.exp(), 1, generator=sampler).squeeze(1)  # (E,)
                steps_obs.append(obs)
                actions.append(action)
                logps.append(logp_all.gather(1, action.unsqueeze(1)).squeeze(1))
                values.append(model.value(obs))
                next_obs, step_rewards, step_done = [], [], []
                for i, env in enumerate(envs):
                    o, r, terminated, truncated, _ = env.step(int(action[i]))
                    running[i] += r
                    if truncated and not terminated:
                        bootstrap[(step, i)] = model.value(torch.tensor(o).unsqueeze(0)).item()
                    if terminated or truncated:
                        episode_returns.append(running[i])
                        running[i] = 0.0
                        o, _ = env.reset()
                    next_obs.append(o)
                    step_rewards.append(r)
                    step_done.append(terminated or truncated)
                obs = torch.tensor(np.stack(next_obs))
                rewards.append(step_rewards)
                dones.append(step_done)
            last_values = model.value(obs)  # (E,) for fragments still running at the end
        for i in range(hp.n_envs):
            if not dones[-1][i]:
                bootstrap[(hp.n_steps - 1, i)] = last_values[i].item()

        # 2. advantages: episode fragments as masked rows, through the library's GAE
        segments = segments_of(dones)
        width = max(len(s) for s in segments)
        row_rewards = torch.zeros(len(segments), width)  # (S, L)
        row_values = torch.zeros(len(segments), width)  # (S, L)
        mask = torch.zeros(len(segments), width, dtype=torch.long)  # (S, L)
        for row, segment in enumerate(segments):
            for col, (step, env) in enumerate(segment):
                row_rewards[row, col] = rewards[step][env] + hp.gamma * bootstrap.get((step, env), 0.0)
                row_values[row, col] = values[step][env]
                mask[row, col] = 1
        advantages, returns = gae(row_rewards, row_values, mask, hp.gamma, hp.lam)  # (S, L)
        order = [index for segment in segments for index in segment]  # row-major = mask order
        flat_obs = torch.stack([steps_obs[s][e] for s, e in order])  # (N, 4)
        flat_actions = torch.stack([actions[s][e] for s, e in order])  # (N,)
        flat_logp_old = torch.stack([logps[s][e] for s, e in order])  # (N,)
        flat_values_old = torch.stack([values[s][e] for s, e in order])  # (N,)
        flat_adv = advantages[mask.bool()]  # (N,)
        flat_returns = returns[mask.bool()]  # (N,)

        # 3. clipped updates: each time step is a one-token row, aggregated per token
        n = flat_obs.shape[0]
        for _ in range(hp.epochs):
            permutation = torch.randperm(n, generator=sampler)
            for start in range(0, n, hp.minibatch_size):
                idx = permutation[start : start + hp.minibatch_size]
                ones = torch.ones(len(idx), 1)  # (M, 1) every row's single position is real
                normalizer = loss_normalizer("token", num_tokens=len(idx), num_sequences=len(idx))
                adv = whiten(flat_adv[idx].unsqueeze(1), ones)  # (M, 1)
                logp = model.logprobs(flat_obs[idx]).gather(1, flat_actions[idx].unsqueeze(1))  # (M, 1)
                policy = clipped_policy_loss(
                    logp, flat_logp_old[idx].unsqueeze(1), adv, ones,
                    eps_low=clip, eps_high=clip, aggregation="token", normalizer=normalizer,
                )
                value = clipped_value_loss(
                    model.value(flat_obs[idx]).unsqueeze(1), flat_values_old[idx].unsqueeze(1),
                    flat_returns[idx].unsqueeze(1), ones,
                    eps_v=hp.value_clip, aggregation="token", normalizer=normalizer,
                )
                loss = policy.loss + hp.value_coef * value.loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), hp.max_grad_norm)
                optimizer.step()
        if (update + 1) % 50 == 0 and episode_returns:
            recent = statistics.mean(episode_returns[-20:])
            print(f"update {update + 1}/{n_updates}: mean return of the last 20 episodes {recent:.1f}", flush=True)
    return model, episode_returns


def evaluate(model: ActorCritic, seed: int, episodes: int) -> list[float]:
    """Returns of greedy (argmax) episodes on fresh environments."""
    env = gym.make("CartPole-v1")
    returns = []
    with torch.no_grad():
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                action = int(model.logprobs(torch.tensor(obs).unsqueeze(0)).argmax())
                obs, reward, terminated, truncated, _ = env.step(action)
                total += reward
                done = terminated or truncated
            returns.append(total)
    return returns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--total-steps", type=int, default=Hyperparameters.total_steps)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny networks: 1 is fastest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, episode_returns = train(args.seed, Hyperparameters(total_steps=args.total_steps))
    train_s = time.perf_counter() - start
    last = episode_returns[-20:]
    evaluation = evaluate(model, seed=10_000 + args.seed, episodes=args.eval_episodes)
    print(f"gymnasium {gym.__version__}, torch {torch.__version__}, seed {args.seed}")
    print(f"trained {args.total_steps} steps ({len(episode_returns)} episodes) in {train_s:.0f} s")
    print(f"mean return, last {len(last)} training episodes: {statistics.mean(last):.1f}")
    eval_mean = statistics.mean(evaluation)
    print(f"mean return, {len(evaluation)} greedy evaluation episodes: {eval_mean:.1f} (solved at {SOLVED:.0f})")
    print("SOLVED" if eval_mean >= SOLVED else "NOT SOLVED")


if __name__ == "__main__":
    main()
