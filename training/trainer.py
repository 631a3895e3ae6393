"""The training loop: any ``SequenceModel`` through ``deepspeed.initialize``.

One process on CPU here; ``deepspeed --num_gpus N`` runs the same code data-parallel on GPUs
(each rank sees its slice of every epoch's batches). ZeRO settings live in
``training/deepspeed/zero<N>.json``; their ``"auto"`` values are filled from ``TrainConfig``
(batch size, accumulation, learning rate, weight decay, bf16 on GPU).

Each epoch ends with a validation pass (full-ranking NDCG@10) and a DeepSpeed checkpoint holding
the engine, the optimizer, the RNG states and the loop's own state, so a killed run resumes at the
next epoch and continues exactly as an uninterrupted one would. The best epoch's weights are
kept apart and restored at the end (early stopping).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encore.core import faults
from encore.core.config import EvalSettings, TrainConfig
from encore.core.progress import Progress
from training.data import Dataset, EvalSet, prefix_samples, seq2seq_windows, training_plays
from training.metrics import (
    candidate_ranks,
    draw_candidates,
    evaluate,
    metrics_from_ranks,
    popularity_ranks,
    targets_kept,
)
from training.models.base import SequenceModel, trim_padding

log = logging.getLogger(__name__)

DEEPSPEED_DIR = Path(__file__).resolve().parent / "deepspeed"
SELECTION_METRIC = "ndcg@10"

# Sequence models first learn the item unigram (loss ~ its entropy, the lists = the popularity
# ranking) and sit on that plateau for several epochs before they start to read the history.
# On the sample worlds GRU4Rec and BERT4Rec stayed there 4-8 epochs (2026-12-03), and a patience
# of 3 stopped them on it: their rows equalled the popularity ranking. Patience therefore counts
# only once the best validation score is clearly above the popularity ranking's.
PLATEAU_MARGIN = 1.5  # "clearly": 50% above; on ~100 validation users a plateau epoch read up to 1.46x


@dataclass
class FitResult:
    model: SequenceModel  # the trained model with its best epoch's weights, plain (not partitioned)
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    stopped_early: bool = False
    resumed_from: int | None = None  # epoch the run resumed after, if it did
    ds_config: dict[str, Any] = field(default_factory=dict)
    samples_per_s: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Run a block without moving the global random states (python, numpy, torch) of the caller."""
    py, nps = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        yield
    random.setstate(py)
    np.random.set_state(nps)


# Grouped batches: a pool of this many batches is sorted by length before it is cut, so batches
# hold alike lengths and the order of the data still changes from pool to pool and epoch to epoch.
GROUP_POOL_BATCHES = 50


def epoch_batches(order: torch.Tensor, items: torch.Tensor, batch_size: int, grouped: bool,
                  seed: int) -> list[torch.Tensor]:
    """One epoch's batches of window indices, each index of ``order`` exactly once.

    Plain: ``order`` cut into consecutive batches. Grouped (as Hugging Face's ``group_by_length``):
    ``order`` (already shuffled) is cut into pools of ``GROUP_POOL_BATCHES`` batches, each pool is
    sorted by the windows' real lengths (``items`` [N, L+1], 0 = pad) and cut, and the batches are
    shuffled with ``seed`` so that short and long batches alternate.
    """
    if not grouped:
        return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    lengths = (items[order] != 0).sum(dim=1)  # [len(order)]
    pool = batch_size * GROUP_POOL_BATCHES
    batches: list[torch.Tensor] = []
    for s in range(0, len(order), pool):
        chunk = order[s:s + pool][torch.argsort(lengths[s:s + pool], stable=True)]
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    shuffle = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed))
    return [batches[i] for i in shuffle.tolist()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Set to the pid of the process that filled in the single-process env below. A launcher (deepspeed,
# torchrun) never sets it, so its RANK/MASTER_PORT are left alone.
SELF_SET_ENV = "ENCORE_DIST_ENV_PID"


def single_process_env() -> None:
    """The distributed env DeepSpeed wants when it was not started by its launcher (STACK-NOTES).

    A process that trained in-process holds a torch.distributed store on its MASTER_PORT, and the
    children it starts inherit its environment. A child that kept that port would fail with
    EADDRINUSE, so an env filled in by another process (SELF_SET_ENV names another pid) gets a free
    port of its own.
    """
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    owner = os.environ.get(SELF_SET_ENV)
    if owner is None and "RANK" in os.environ:
        return  # started by a launcher: its env is the truth
    for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(k, v)
    if owner is None:  # first call here; a MASTER_PORT the operator exported is kept
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    elif owner != str(os.getpid()):  # inherited from the process that set it, which may hold the port
        os.environ["MASTER_PORT"] = str(_free_port())
    os.environ[SELF_SET_ENV] = str(os.getpid())


def deepspeed_config(tc: TrainConfig, gpu: bool, world_size: int = 1) -> dict[str, Any]:
    """training/deepspeed/zero<N>.json with its "auto" values filled from the train config."""
    cfg = json.loads((DEEPSPEED_DIR / f"zero{tc.zero_stage}.json").read_text())
    cfg["train_micro_batch_size_per_gpu"] = tc.batch_size
    cfg["gradient_accumulation_steps"] = tc.grad_accum
    cfg["train_batch_size"] = tc.batch_size * tc.grad_accum * world_size
    cfg["optimizer"]["params"].update(lr=tc.lr, weight_decay=tc.weight_decay)
    bf16 = tc.bf16 if tc.bf16 is not None else gpu
    cfg["bf16"] = {"enabled": bool(bf16)}
    return cfg


def windows_for(model: SequenceModel, data: Dataset, tc: TrainConfig, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An epoch's training windows: every window, or sampled prefixes (E4SRec's last-token readout,
    BERT4Rec's crops)."""
    seed = tc.seed * 100_003 + epoch  # a new draw each epoch, the same for a rerun
    if getattr(model, "readout", None) == "last":
        return prefix_samples(data.train, tc.max_len, tc.e4srec.examples_per_user, seed=seed)
    if getattr(model, "kind", None) == "bert4rec" and getattr(model, "crops", 0) > 0:
        return prefix_samples(data.train, tc.max_len, model.crops, seed=seed)
    return seq2seq_windows(data.train, tc.max_len)


@contextlib.contextmanager
def full_params(engine: Any) -> Iterator[None]:
    """Under ZeRO-3 parameters are partitioned: gather them to read or write the state dict."""
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=0):
            yield
    else:
        yield


def _trainable_state(model: SequenceModel) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}


class _ScoreViaForward:
    """``score()`` routed through the model's forward, where ZeRO-3 has the parameters gathered."""

    def __init__(self, module: SequenceModel) -> None:
        self.module = module

    def score(self, items: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        return self.module({"items": items, "completion": completion, "score": items})

    def eval(self) -> _ScoreViaForward:
        self.module.eval()
        return self

    def train(self, mode: bool = True) -> _ScoreViaForward:
        self.module.train(mode)
        return self

    @property
    def training(self) -> bool:
        return self.module.training

    @property
    def n_items(self) -> int:
        return self.module.n_items


def validate(model: SequenceModel, evalset: EvalSet, tc: TrainConfig, device: torch.device) -> dict[str, float]:
    was_training = model.training
    try:
        return evaluate(_ScoreViaForward(model), evalset.items, evalset.completion, evalset.targets,  # type: ignore[arg-type]
                        evalset.history, tc.eval, batch_size=max(64, tc.batch_size), device=str(device),
                        seed=tc.seed)
    finally:
        model.train(was_training)


def _plain_copy(engine: Any) -> SequenceModel:
    """The engine's model as an ordinary module: ZeRO-3 leaves its parameters partitioned."""
    module = engine.module
    if engine.zero_optimization_stage() != 3:
        return module
    with full_params(engine):
        state = {k: v.detach().clone().cpu() for k, v in module.state_dict().items()}
    plain = type(module)(**module.config())
    plain.load_state_dict(state)
    return plain


def popularity_metrics(data: Dataset, evalset: EvalSet, settings: EvalSettings, ks: list[int],
                       seed: int = 0, candidates: torch.Tensor | None = None) -> dict[str, float]:
    """The popularity ranking (training plays) on ``evalset``, ranked and masked as the model's
    ranking is: what every model must beat. Under the candidates protocol it ranks the same
    lists: ``candidates`` where the caller drew them, else ``draw_candidates`` with the run's
    ``seed``. {} under the sampled protocol, whose candidates are the model's own draws, or for
    an empty set."""
    if settings.protocol == "sampled" or len(evalset.targets) == 0:
        return {}
    exclude = evalset.history if settings.mask_history else None
    plays = training_plays(data)
    if settings.protocol == "candidates":
        cands = candidates if candidates is not None else draw_candidates(
            evalset.targets, len(data.vocab), settings.num_candidates, seed, exclude)
        scores = torch.from_numpy(plays[cands.numpy()]).float()  # [N, C]
        return metrics_from_ranks(candidate_ranks(scores, cands, targets_kept(evalset.targets, exclude)), ks)
    return metrics_from_ranks(popularity_ranks(plays, evalset.targets, exclude), ks)


def popularity_floor(data: Dataset, tc: TrainConfig) -> float | None:
    """The popularity ranking's validation SELECTION_METRIC; None where it has none (see above)."""
    return popularity_metrics(data, data.valid, tc.eval, [10], seed=tc.seed).get(SELECTION_METRIC)


def counts_against_patience(best: float, floor: float | None) -> bool:
    """Whether an epoch without a better score uses up patience: not while the best is still at the
    popularity plateau (see PLATEAU_MARGIN). ``tc.epochs`` bounds a model that never leaves it."""
    return floor is None or best > floor * PLATEAU_MARGIN


def fit(model: SequenceModel, data: Dataset, tc: TrainConfig, run_dir: Path,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        max_epochs: int | None = None) -> FitResult:
    """Train ``model`` in place with DeepSpeed; checkpoints under ``run_dir``; returns the history.

    ``run_dir`` holding a checkpoint from an interrupted run means resume. ``on_epoch(epoch, row)``
    sees each epoch's losses and validation metrics (the caller logs them to MLflow).
    ``max_epochs`` stops early on purpose (tests, benchmarks) without touching ``tc``.
    """
    gpu = torch.cuda.is_available()
    if not gpu:
        # Said, not detected: DeepSpeed's detection warns "Setting accelerator to CPU" otherwise.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    single_process_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ds_cfg = deepspeed_config(tc, gpu, world)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{model.kind} has no trainable parameters")
    # DeepSpeed prints "... shm_comm_op built successfully" on stdout as it sets up its CPU
    # communication op; stdout is for a command's result. Kept at debug level instead.
    with contextlib.redirect_stdout(io.StringIO()) as said:
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_cfg)
    if said.getvalue().strip():
        log.debug("deepspeed: %s", said.getvalue().strip())
    if tc.zero_stage == 3:
        for p in model.tied_parameters():
            deepspeed.zero.register_external_parameter(model, p)
    device = engine.device
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = run_dir / "checkpoints"
    best_path = run_dir / "best.pt"

    state: dict[str, Any] = {"epoch": 0, "best": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": []}
    resumed_from = None
    if (ckpt_dir / "latest").exists():
        _, client = engine.load_checkpoint(str(ckpt_dir))
        state = client["loop"]
        torch.set_rng_state(client["torch_rng"])
        np.random.set_state(client["numpy_rng"])
        random.setstate(client["python_rng"])
        resumed_from = state["epoch"]
        log.info("resumed after epoch %d (best %s %.4f at epoch %d)", state["epoch"], SELECTION_METRIC,
                 state["best"], state["best_epoch"])

    rank = int(os.environ.get("RANK", "0"))
    floor = popularity_floor(data, tc)
    if floor is not None:
        log.info("popularity ranking: valid %s %.4f; patience counts once the best is above %.4f",
                 SELECTION_METRIC, floor, floor * PLATEAU_MARGIN)
    stopped_early = False
    seen, busy = 0, 0.0
    last_epoch = min(tc.epochs, max_epochs) if max_epochs else tc.epochs
    for epoch in range(state["epoch"] + 1, last_epoch + 1):
        items, comp = windows_for(model, data, tc, epoch)
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(tc.seed * 7919 + epoch))
        if tc.windows_per_epoch is not None:
            order = order[:tc.windows_per_epoch]  # the permutation is fresh each epoch: a new subset
        log.info("epoch %d: %d of %d training windows", epoch, len(order), len(items))
        order = order[rank::world]  # each rank its share (launcher runs)
        grouped = model.kind == "e4srec" and tc.e4srec.group_by_length
        batches = epoch_batches(order, items, tc.batch_size, grouped, seed=tc.seed * 7919 + epoch)
        engine.train()
        losses = []
        t0 = time.perf_counter()
        # Counted in samples, so the bar's rate is samples/s and its ETA the epoch's remainder.
        with Progress(len(order), f"{model.kind} epoch {epoch}/{last_epoch}", "sample") as bar:
            for idx in batches:
                x, c = trim_padding(items[idx], comp[idx]) if grouped else (items[idx], comp[idx])
                batch = {"items": x.to(device), "completion": c.to(device)}
                loss = engine(batch)
                engine.backward(loss)
                engine.step()
                losses.append(float(loss.detach().float()))
                bar.update(len(idx), loss=losses[-1])
        busy += time.perf_counter() - t0
        seen += len(order)
        valid = validate(engine.module, data.valid, tc, device)
        with full_params(engine):
            row = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                   "first_step_loss": losses[0] if losses else float("nan"),
                   **{f"valid_{k}": v for k, v in valid.items()}}
            score = valid[SELECTION_METRIC]
            if score > state["best"]:
                state.update(best=score, best_epoch=epoch, bad_epochs=0)
                if rank == 0:
                    torch.save(_trainable_state(engine.module), best_path)
            elif counts_against_patience(state["best"], floor):
                state["bad_epochs"] += 1
        state["epoch"] = epoch
        state["history"].append(row)
        log.info("epoch %d: loss %.4f, valid %s %.4f (best %.4f at %d)", epoch, row["train_loss"],
                 SELECTION_METRIC, score, state["best"], state["best_epoch"])
        if on_epoch:
            on_epoch(epoch, row)
        engine.save_checkpoint(str(ckpt_dir), tag=f"epoch-{epoch}", client_state={
            "loop": state, "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate()})
        if rank == 0:
            for old in ckpt_dir.glob("epoch-*"):  # keep the newest checkpoint only: disk, not history
                if old.name != f"epoch-{epoch}":
                    shutil.rmtree(old, ignore_errors=True)
        faults.point("train.epoch_saved")
        if state["bad_epochs"] >= tc.patience:
            stopped_early = True
            log.info("early stop: no better validation %s for %d epochs", SELECTION_METRIC, tc.patience)
            break

    if best_path.exists():
        with full_params(engine):
            engine.module.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True), strict=False)
    model = _plain_copy(engine).eval()
    best_row = next((r for r in state["history"] if r["epoch"] == state["best_epoch"]), {})
    return FitResult(model=model, best_epoch=state["best_epoch"],
                     best_valid={k[len("valid_"):]: v for k, v in best_row.items() if k.startswith("valid_")},
                     history=state["history"], stopped_early=stopped_early, resumed_from=resumed_from,
                     ds_config=ds_cfg, samples_per_s=seen / busy if busy else 0.0)
