"""E4SRec training throughput: DeepSpeed engine vs a plain PyTorch loop (same model, batches, optimizer).

Each mode runs in its own process (peak memory is per process), on the same seeded batches of
random item windows, with torch AdamW (DeepSpeed is given ``torch_adam`` so the optimizer maths
is identical). Prints samples/s and peak memory for both and the ratio DeepSpeed / plain (goal
>= 0.9x).

    python bench/train.py                                  # MiniLM backbone, CPU, ZeRO 0
    python bench/train.py --backbone /models/llama-1b --zero-stage 2 --bf16 --batch-size 8
    python bench/train.py --make-llama /tmp/llama-1b       # write a random ~1B Llama folder first

On a GPU, memory is torch.cuda.max_memory_allocated; on CPU, the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_llama(path: Path, hidden: int = 2048, layers: int = 16, heads: int = 32, kv_heads: int = 8,
               inner: int = 8192, vocab: int = 32000) -> Path:
    """A Llama-architecture folder with random weights (~1.1B parameters at the defaults)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    cfg = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, intermediate_size=inner, vocab_size=vocab,
                      max_position_embeddings=512, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = LlamaModel(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    words = ["<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(997)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {path}: {n / 1e9:.2f}B parameters")
    return path


def worker(args: argparse.Namespace) -> dict:
    import torch
    from _models import random_e4srec

    from encore.core.config import TrainConfig
    from training.trainer import deepspeed_config, single_process_env

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    n, L, B = args.items, args.max_len, args.batch_size
    model = random_e4srec(n, args.backbone, max_len=L)
    g = torch.Generator().manual_seed(2)
    batches = [{"items": torch.randint(1, n + 1, (B, L + 1), generator=g),
                "completion": torch.rand(B, L + 1, generator=g)} for _ in range(args.steps + args.warmup)]
    tc = TrainConfig(batch_size=B, zero_stage=args.zero_stage, bf16=args.bf16, lr=1e-4)
    if args.mode == "deepspeed":
        import deepspeed

        single_process_env()
        params = [p for p in model.parameters() if p.requires_grad]
        engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=deepspeed_config(tc, gpu))
        step_fn = None
    else:
        model.to(device)
        if args.bf16:
            model.to(torch.bfloat16)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

        def step_fn(batch: dict) -> None:
            loss = model(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)  # the DeepSpeed configs clip at 1.0 too
            opt.step()
            opt.zero_grad(set_to_none=True)

    def run(batch: dict) -> None:
        batch = {k: v.to(device) for k, v in batch.items()}
        if step_fn is None:
            loss = engine(batch)
            engine.backward(loss)
            engine.step()
        else:
            step_fn(batch)

    for b in batches[:args.warmup]:
        run(b)
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for b in batches[args.warmup:]:
        run(b)
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    mem = (torch.cuda.max_memory_allocated() if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"mode": args.mode, "samples_per_s": args.steps * B / seconds, "seconds": seconds,
            "peak_mem_gib": mem / 2**30, "memory": "GPU allocated" if gpu else "process RSS",
            "device": torch.cuda.get_device_name() if gpu else "CPU", "threads": torch.get_num_threads(),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", type=Path, help="HF model folder (default: MiniLM from the wheel)")
    ap.add_argument("--make-llama", type=Path, help="write a random ~1B-parameter Llama folder here and exit")
    ap.add_argument("--zero-stage", type=int, default=0)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--mode", choices=["plain", "deepspeed"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_llama:
        make_llama(args.make_llama)
        return
    if args.mode:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    results = {}
    for mode in ("plain", "deepspeed"):
        cmd = [sys.executable, __file__, "--mode", mode] + [a for a in sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
        results[mode] = json.loads(line[len("RESULT "):])
    p, d = results["plain"], results["deepspeed"]
    print(f"E4SRec training, {p['device']} ({p['threads']} threads), backbone {args.backbone or 'MiniLM-L6'}, "
          f"{p['total'] / 1e6:.1f}M parameters ({p['trainable'] / 1e6:.2f}M trainable), batch {args.batch_size} x "
          f"{args.max_len} items, {args.steps} timed steps, ZeRO {args.zero_stage}, {'bf16' if args.bf16 else 'fp32'}")
    print(f"{'':<14}{'samples/s':>11}{'peak mem (GiB)':>16}")
    for name, r in (("plain PyTorch", p), ("DeepSpeed", d)):
        print(f"{name:<14}{r['samples_per_s']:>11.1f}{r['peak_mem_gib']:>16.2f}   ({r['memory']})")
    print(f"ratio DeepSpeed / plain: {d['samples_per_s'] / p['samples_per_s']:.2f}x samples/s (goal >= 0.9x), "
          f"{d['peak_mem_gib'] / p['peak_mem_gib']:.2f}x memory")


if __name__ == "__main__":
    main()
