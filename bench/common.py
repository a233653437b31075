"""What the trainer benchmarks share: the model, the data, FLOP counts, the matmul rate, a neutral judge.

Both trainers of a comparison start from the same directory (`build_models`): a Llama of 4 layers,
hidden 256, with the byte-level tokenizer of `builtin:tiny-llama`, its weights drawn exactly as
`trainers.models.tiny` draws them. The data (`preference_rows`) has prompts and responses of varied
length, up to `MAX_LENGTH` tokens per sequence, so that no trainer truncates anything and padding
is what real data has. Final metrics are judged by plain code here (`dpo_judge`, `reward_judge`),
not by either trainer's own evaluation.
"""

from __future__ import annotations

import os
import platform
import random
import resource
import statistics
import string
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

# The benchmark model: `builtin:tiny-llama` scaled up (hidden 64 → 256, 2 → 4 layers).
MODEL_SHAPE = {
    "hidden_size": 256,
    "intermediate_size": 688,  # 8/3 · hidden, rounded to a multiple of 16, as Llama does
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
}
MAX_LENGTH = 128  # most tokens of prompt + response
MAX_PROMPT_LENGTH = 64
POLICY_DIR, REWARD_DIR = "policy", "reward_model"


def build_models(root: Path) -> tuple[Path, Path]:
    """Write the benchmark causal LM and a reward model built on it, with their tokenizer.

    The causal LM's matrices are drawn from N(0, 0.02²) by a generator seeded with
    `trainers.models.tiny.INIT_SEED`, in parameter order, norms set to 1 (as `build_tiny_llama`). The reward
    model is `trainers.models.reward.load_reward_model` of that directory (backbone copied, score head
    drawn by its seeded generator), saved so both trainers read the same score head.

    Args:
        root: an existing directory; ``root/policy`` and ``root/reward_model`` are written.

    Returns:
        The two model directories.
    """
    # Imported here: TRL's PPO child imports this module from a virtualenv without our dependencies.
    from trainers.models.reward import load_reward_model
    from trainers.models.tiny import INIT_SEED, INIT_STD, build_model_config, build_tokenizer

    tokenizer = build_tokenizer()
    config: LlamaConfig = build_model_config(tokenizer)
    for key, value in MODEL_SHAPE.items():
        setattr(config, key, value)
    config.head_dim = config.hidden_size // config.num_attention_heads
    with torch.random.fork_rng(devices=[]):
        model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(INIT_SEED)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, INIT_STD, generator=generator)
            else:
                param.fill_(1.0)
    policy_dir, reward_dir = root / POLICY_DIR, root / REWARD_DIR
    model.save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    reward_model, reward_tokenizer = load_reward_model(policy_dir)
    reward_model.save_pretrained(reward_dir)
    reward_tokenizer.save_pretrained(reward_dir)
    return policy_dir, reward_dir


def preference_rows(n: int, *, seed: int) -> list[dict[str, str]]:
    """Preference rows of varied length whose chosen response is upper case, the rejected lower case.

    Prompts are 8–48 bytes (plus BOS), each response 4 to 80 − len(prompt) bytes (plus EOS), drawn
    uniformly, so every sequence fits in `MAX_LENGTH` tokens of the byte-level tokenizer and chosen
    and rejected lengths differ within a pair, as in real preference data.

    Args:
        n: rows to make.
        seed: seed of a private generator.

    Returns:
        Rows ``{"prompt", "chosen", "rejected"}``.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = "say: " + "".join(rng.choices(string.ascii_lowercase + " ", k=rng.randint(3, 42))) + "\n"
        budget = MAX_LENGTH - len(prompt) - 3  # BOS and EOS, and one token to spare
        chosen = "".join(rng.choices(string.ascii_uppercase + " ", k=rng.randint(4, budget)))
        rejected = "".join(rng.choices(string.ascii_lowercase + " ", k=rng.randint(4, budget)))
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def prompt_rows(n: int, *, seed: int) -> list[dict[str, Any]]:
    """Prompt rows for GRPO: a lower-case prompt of 8–48 bytes and the ``answer`` the reward looks for.

    The answer is one upper-case letter that the prompt names; a random model writes it in about one
    completion of 32 tokens in ten, so groups of four differ often enough to learn from.

    Args:
        n: rows to make.
        seed: seed of a private generator.

    Returns:
        Rows ``{"prompt", "answer", "prompt_tokens"}`` (BOS included in the count).
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        answer = rng.choice(string.ascii_uppercase)
        prompt = f"write {answer}: " + "".join(rng.choices(string.ascii_lowercase + " ", k=rng.randint(0, 38))) + "\n"
        rows.append({"prompt": prompt, "answer": answer, "prompt_tokens": len(prompt.encode()) + 1})
    return rows


def matmul_params(config: LlamaConfig) -> int:
    """Weights that multiply every token's activations (the LM head included, embeddings not)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i  # q, o; k, v; gate, up, down
    return layers * per_layer + h * config.vocab_size


def forward_flops(config: LlamaConfig, lengths: Sequence[int], *, head: bool = True) -> float:
    """FLOPs of one forward over sequences of the given real lengths (no padding counted).

    ``2·N·T`` for the matmul weights plus ``4·L·T²·h`` for the attention scores and their
    weighted sum (every token against the whole sequence: the PaLM/nanoGPT convention).

    Args:
        config: the model's config.
        lengths: real tokens of each sequence.
        head: whether the vocabulary projection runs (a reward model's one-output head does not).

    Returns:
        Floating-point operations.
    """
    n = matmul_params(config) - (0 if head else config.hidden_size * config.vocab_size)
    attn = 4 * config.num_hidden_layers * config.hidden_size
    return float(sum(2 * n * t + attn * t * t for t in lengths))


def measure_matmul_rate(size: int = 1024, seconds: float = 3.0, dtype: torch.dtype = torch.float32) -> float:
    """This machine's fp32 matmul rate in FLOP/s: the median of repeated (size × size) @ (size × size).

    Args:
        size: matrix side.
        seconds: time to spend measuring.
        dtype: element type.

    Returns:
        Median FLOP/s over the timed repetitions.
    """
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    rates, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        a @ b
        rates.append(2 * size**3 / (time.perf_counter() - start))
    return statistics.median(rates)


def peak_rss_mib() -> float:
    """The peak resident set size of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def tokenize_rows(rows: Sequence[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> list[tuple[list[int], ...]]:
    """(prompt_ids, chosen_ids, rejected_ids) of each row, without truncation: BOS + prompt; response + EOS."""
    out = []
    for row in rows:
        prompt = tokenizer(row["prompt"])["input_ids"]
        chosen = tokenizer(row["chosen"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rejected = tokenizer(row["rejected"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((prompt, chosen, rejected))
    return out


def _padded(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)  # (N, T)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (N, T)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


@torch.no_grad()
def _response_logps(model, triples, pad: int) -> torch.Tensor:
    """(2N,) summed log-probs of the chosen then the rejected responses, by a plain full log-softmax."""
    sequences = [p + c for p, c, _ in triples] + [p + r for p, _, r in triples]
    starts = [len(p) for p, _, _ in triples] * 2
    ids, mask = _padded(sequences, pad)
    logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)  # (2N, T, V)
    out = []
    for i, seq in enumerate(sequences):
        targets = torch.tensor(seq[starts[i] :])
        out.append(logp[i, starts[i] - 1 : len(seq) - 1].gather(1, targets[:, None]).sum())
    return torch.stack(out)


def dpo_judge(policy, reference_dir: Path, rows, tokenizer, beta: float = 0.1) -> dict[str, float]:
    """DPO sigmoid loss and reward accuracy of `policy` on `rows`, against the initial model.

    Args:
        policy: the trained causal LM.
        reference_dir: the directory both trainers started from (π_ref).
        rows: held-out preference rows.
        tokenizer: the byte-level tokenizer.
        beta: β of the loss.

    Returns:
        ``{"eval_loss", "eval_reward_accuracy", "eval_margin"}`` averaged over the rows.
    """
    reference = AutoModelForCausalLM.from_pretrained(reference_dir).eval()
    was_training = policy.training
    policy.eval()
    triples = tokenize_rows(rows, tokenizer)
    losses, correct, margins = [], [], []
    for start in range(0, len(triples), 16):
        chunk = triples[start : start + 16]
        b = len(chunk)
        pi = _response_logps(policy, chunk, tokenizer.pad_token_id)
        ref = _response_logps(reference, chunk, tokenizer.pad_token_id)
        chosen, rejected = beta * (pi[:b] - ref[:b]), beta * (pi[b:] - ref[b:])
        losses.append(-F.logsigmoid(chosen - rejected))
        correct.append((chosen > rejected).float())
        margins.append(chosen - rejected)
    policy.train(was_training)
    return {
        "eval_loss": torch.cat(losses).mean().item(),
        "eval_reward_accuracy": torch.cat(correct).mean().item(),
        "eval_margin": torch.cat(margins).mean().item(),
    }


@torch.no_grad()
def reward_judge(model, rows, tokenizer) -> dict[str, float]:
    """Bradley–Terry loss and accuracy of a sequence-classification reward model on `rows`.

    The reward of a row is the model's own output (``logits`` at the last non-pad token), as
    Hugging Face computes it for any sequence classifier.

    Returns:
        ``{"eval_loss", "eval_accuracy", "eval_margin"}`` averaged over the rows.
    """
    was_training = model.training
    model.eval()
    triples = tokenize_rows(rows, tokenizer)
    losses, correct, margins = [], [], []
    for start in range(0, len(triples), 16):
        chunk = triples[start : start + 16]
        b = len(chunk)
        ids, mask = _padded([p + c for p, c, _ in chunk] + [p + r for p, _, r in chunk], tokenizer.pad_token_id)
        r = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1).float()  # (2N,)
        losses.append(-F.logsigmoid(r[:b] - r[b:]))
        correct.append((r[:b] > r[b:]).float())
        margins.append(r[:b] - r[b:])
    model.train(was_training)
    return {
        "eval_loss": torch.cat(losses).mean().item(),
        "eval_accuracy": torch.cat(correct).mean().item(),
        "eval_margin": torch.cat(margins).mean().item(),
    }
