"""Training through DeepSpeed on CPU: every ZeRO stage steps, checkpoints resume exactly, the best
epoch is what is kept, and a trained model goes to the MLflow registry and comes back by alias."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mlflow
from encore.core.config import EncoreConfig, TrainConfig
from tests.conftest import copy_home
from tests.fixtures.tiny_llm import make_tiny_causal_lm
from training.data import Sequences, Vocab, seq2seq_windows, split
from training.metrics import evaluate
from training.models import build_id_encoder
from training.models.base import ContentTable
from training.models.sasrec import SASRec
from training.trainer import fit

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def cyclic_data(n_items: int = 30, users: int = 12, length: int = 40) -> tuple:
    """Users walk a cycle 1 -> 2 -> ... -> n from different starting points: next item is learnable."""
    rng = np.random.default_rng(0)
    items = [((rng.integers(0, n_items) + np.arange(length)) % n_items + 1).astype(np.int64) for _ in range(users)]
    seqs = Sequences([f"u{i}" for i in range(users)], items, [np.full(length, np.nan, np.float32)] * users,
                     [np.arange(length, dtype=np.int64)] * users)
    return split(seqs, Vocab([str(i) for i in range(1, n_items + 1)]), TrainConfig(max_len=10)), n_items


def small_tc(**changes) -> TrainConfig:
    base = {"model": "sasrec", "max_len": 10, "epochs": 2, "batch_size": 16, "lr": 5e-3, "patience": 5,
            "id": {"hidden": 16, "inner": 32, "dropout": 0.0}}
    return TrainConfig.model_validate(base | changes)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_trains_on_cpu_under_every_zero_stage(stage: int, tmp_path: Path) -> None:
    data, n = cyclic_data()
    tc = small_tc(zero_stage=stage)
    torch.manual_seed(0)
    model = SASRec(n_items=n, max_len=10, hidden=16, inner=32, dropout=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(model, data, tc, tmp_path)
    assert result.ds_config["zero_optimization"]["stage"] == stage
    assert len(result.history) == 2
    assert result.history[1]["train_loss"] < result.history[0]["first_step_loss"]
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "checkpoints" / "latest").exists()


def test_resuming_after_an_interruption_gives_the_same_next_step_loss(tmp_path: Path) -> None:
    data, n = cyclic_data()
    tc = small_tc(epochs=3, id={"hidden": 16, "inner": 32, "dropout": 0.3})  # dropout: RNG state matters
    torch.manual_seed(0)
    straight = fit(SASRec(n_items=n, max_len=10, hidden=16, inner=32, dropout=0.3), data, tc, tmp_path / "a")

    torch.manual_seed(0)
    fit(SASRec(n_items=n, max_len=10, hidden=16, inner=32, dropout=0.3), data, tc, tmp_path / "b", max_epochs=1)
    torch.manual_seed(123)  # a different fresh model and RNG: everything must come from the checkpoint
    resumed = fit(SASRec(n_items=n, max_len=10, hidden=16, inner=32, dropout=0.3), data, tc, tmp_path / "b")

    assert resumed.resumed_from == 1
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for a, b in zip(straight.history[1:], resumed.history[1:], strict=True):
        assert b["first_step_loss"] == pytest.approx(a["first_step_loss"], rel=1e-6, abs=1e-7)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6, abs=1e-7)


def test_early_stopping_keeps_the_best_epochs_weights(tmp_path: Path) -> None:
    data, n = cyclic_data()
    # A learning rate this high makes validation wander: the last epoch is rarely the best.
    tc = small_tc(epochs=6, patience=2, lr=0.3)
    torch.manual_seed(0)
    model = SASRec(n_items=n, max_len=10, hidden=16, inner=32, dropout=0.0)
    result = fit(model, data, tc, tmp_path)
    best = max(r["valid_ndcg@10"] for r in result.history)
    assert result.best_valid["ndcg@10"] == best
    again = evaluate(model, data.valid.items, data.valid.completion, data.valid.targets, data.valid.history, tc.eval)
    assert again["ndcg@10"] == pytest.approx(best)
    if result.stopped_early:
        assert len(result.history) - result.best_epoch == tc.patience


def test_windows_per_epoch_trains_each_epoch_on_that_many_windows(tmp_path: Path) -> None:
    data, n = cyclic_data()
    torch.manual_seed(0)
    whole = fit(SASRec(n_items=n, max_len=10, hidden=16, inner=32, dropout=0.0), data, small_tc(), tmp_path / "a")
    # Every window: several batches of 16, so the epoch's mean loss is not its first step's.
    assert all(r["train_loss"] != r["first_step_loss"] for r in whole.history)
    torch.manual_seed(0)
    capped = fit(SASRec(n_items=n, max_len=10, hidden=16, inner=32, dropout=0.0), data,
                 small_tc(windows_per_epoch=16), tmp_path / "b")
    # 16 windows are one batch: one step an epoch, whose loss is the epoch's.
    assert len(capped.history) == 2
    assert all(r["train_loss"] == r["first_step_loss"] for r in capped.history)


def test_e4srec_starts_from_the_same_random_state_whether_its_id_encoder_was_cached(tmp_path: Path) -> None:
    import random

    from training.train import id_encoder_for
    from training.trainer import seed_everything

    data, _ = cyclic_data()
    # Dropout: training the encoder draws from the global torch RNG.
    tc = small_tc(model="e4srec", epochs=1, id={"hidden": 16, "inner": 32, "dropout": 0.3})
    cfg = EncoreConfig(home=tmp_path).model_copy(update={"train": tc})
    draws = []
    for _ in range(2):  # cold cache (trains the encoder), then warm (loads it)
        seed_everything(0)
        encoder, folder = id_encoder_for(cfg, data, "fingerprint")
        draws.append((torch.rand(4).tolist(), np.random.rand(), random.random(),
                      encoder.item_embeddings().detach().clone()))
    assert len(list(folder.parent.iterdir())) == 1  # trained once
    assert draws[0][:3] == draws[1][:3]
    assert torch.equal(draws[0][3], draws[1][3])


@pytest.mark.parametrize("grouped", [False, True])
def test_e4srec_grouped_by_length_trains_on_batches_trimmed_to_their_longest_window(
        grouped: bool, tmp_path: Path, monkeypatch) -> None:
    from training.models.e4srec import E4SRec, read_prompt

    # Users with 3..39 listens: most windows of 11 are partly padding.
    rng = np.random.default_rng(0)
    items = [rng.integers(1, 31, size=int(n)).astype(np.int64) for n in rng.integers(3, 40, size=40)]
    seqs = Sequences([f"u{i}" for i in range(40)], items, [np.full(len(s), np.nan, np.float32) for s in items],
                     [np.arange(len(s), dtype=np.int64) for s in items])
    data = split(seqs, Vocab([str(i) for i in range(1, 31)]), TrainConfig(max_len=10))
    tc = small_tc(model="e4srec", epochs=1, e4srec={"group_by_length": grouped})
    llama = make_tiny_causal_lm(tmp_path / "llama", chat_template=None)
    torch.manual_seed(0)
    model = E4SRec(30, str(llama), read_prompt(), tc.e4srec.model_dump(mode="json") | {"modalities": ["id"]},
                   8, {}, max_len=10)
    model.set_item_tables(torch.randn(31, 8), ContentTable())
    widths: list[int] = []
    loss = E4SRec.loss
    monkeypatch.setattr(E4SRec, "loss", lambda self, batch: widths.append(batch["items"].shape[1]) or loss(self, batch))
    result = fit(model, data, tc, tmp_path / "run")
    assert np.isfinite(result.history[0]["train_loss"])
    assert sum(widths) > 0 and len(widths) == -(-len(seq2seq_windows(data.train, 10)[0]) // 16)
    if grouped:
        assert min(widths) < 11 and len(set(widths)) > 1
    else:
        assert set(widths) == {11}


@pytest.fixture(scope="module")
def trained_home(featured_home: EncoreConfig, tmp_path_factory: pytest.TempPathFactory) -> EncoreConfig:
    return copy_home(featured_home, tmp_path_factory.mktemp("train") / "home")


def _cfg(cfg: EncoreConfig, **train) -> EncoreConfig:
    tc = TrainConfig.model_validate({"max_len": 20, "batch_size": 32, "id": {"hidden": 32, "inner": 64}} | train)
    return cfg.model_copy(update={"train": tc})


def test_a_trained_model_is_tracked_registered_as_challenger_and_loads_back(trained_home: EncoreConfig) -> None:
    from training.train import train

    cfg = _cfg(trained_home, model="sasrec", epochs=2)
    out = train(cfg)
    assert out.model_version == "1"
    client = mlflow.MlflowClient()
    run = client.get_run(out.run_id)
    assert run.data.params["train.model"] == "sasrec" and run.data.params["train.max_len"] == "20"
    assert run.data.tags["encore.feature_service"] == "training"
    assert run.data.tags["mlflow.source.git.commit"] and run.data.tags["encore.data_end"].startswith("20")
    assert run.data.metrics["test_ndcg_at_10"] == pytest.approx(out.test["ndcg@10"])
    history = client.get_metric_history(out.run_id, "valid_ndcg_at_10")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(out.run_id)}
    assert {"config.yaml", "item_ids.json", "deepspeed.json", "training_curves.png", "metrics.json"} <= artifacts

    version = client.get_model_version_by_alias(cfg.mlflow.model_name, "challenger")
    assert str(version.version) == "1" and version.run_id == out.run_id
    loaded = mlflow.pyfunc.load_model(f"models:/{cfg.mlflow.model_name}@challenger")
    assert loaded.metadata.signature.inputs.input_names() == ["user_id", "track_ids", "completions"]
    item_ids = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=out.run_id, artifact_path="item_ids.json"))
                          .read_text())
    history_tracks = item_ids[:5]
    got = loaded.predict(pd.DataFrame({"user_id": ["x", "y"], "track_ids": [history_tracks, ["not-a-track"]]}),
                         params={"k": 7})
    assert list(got["user_id"]) == ["x", "y"]
    assert all(len(t) == 7 and len(s) == 7 for t, s in zip(got["track_ids"], got["scores"], strict=True))
    assert not set(got["track_ids"][0]) & set(history_tracks)  # history masked
    assert all(np.diff(s).max() <= 0 for s in got["scores"])  # best first
    assert set(got["track_ids"][1]) <= set(item_ids)
    assert list(got["history_len"]) == [5, 0]  # y's history holds no known track: scoring's fallback case


def test_e4srec_on_a_tiny_llama_trains_with_content_from_feast_and_registers(content_store: EncoreConfig,
                                                                             tmp_path: Path) -> None:
    from feature_repo import store
    from training.train import train

    cfg = copy_home(content_store, tmp_path / "home")
    store.apply(cfg)  # Feast keeps absolute table paths: a copied workspace is applied again
    llama = make_tiny_causal_lm(tmp_path / "llama")
    cfg = _cfg(cfg, model="e4srec", epochs=1, e4srec={"backbone": str(llama), "examples_per_user": 4,
                                                      "fusion": "weighted", "fusion_dim": 16})
    out = train(cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"id": cfg.train.id.model_copy(update={"hidden": 16, "inner": 32})})}))
    assert out.fit is not None and len(out.fit.history) == 1
    assert out.id_encoder and Path(out.id_encoder, "model.json").exists()  # the pretrained ID table's model
    run = mlflow.MlflowClient().get_run(out.run_id)
    assert run.data.params["train.e4srec.fusion"] == "weighted"
    assert int(run.data.params["model.trainable_params"]) == out.trainable_params > 0
    loaded = mlflow.pyfunc.load_model(f"models:/{cfg.mlflow.model_name}@challenger")
    tracks = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=out.run_id, artifact_path="item_ids.json"))
                        .read_text())
    got = loaded.predict(pd.DataFrame({"user_id": ["u"], "track_ids": [tracks[:6]],
                                       "completions": [[1.0, None, 0.5, 0.2, 1.0, 0.9]]}), params={"k": 5})
    assert len(got["track_ids"][0]) == 5 and not set(got["track_ids"][0]) & set(tracks[:6])


def test_bench_standard_runs_models_over_seeds_prints_mean_std_and_resumes(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from encore.cli import cli

    rng = np.random.default_rng(0)
    lines = [f"{u} " + " ".join(str(int(i)) for i in (rng.integers(0, 30) + np.arange(12)) % 30 + 1)
             for u in range(1, 41)]
    data = tmp_path / "toy.txt"
    data.write_text("\n".join(lines) + "\n")
    attrs = tmp_path / "attrs.json"
    attrs.write_text(json.dumps({str(i): [i % 4] for i in range(1, 31)}))
    args = ["--home", str(tmp_path / "home"), "bench", "standard", "--data", str(data), "--attributes", str(attrs),
            "--models", "sasrec,gru4rec", "--seeds", "0,1", "--epochs", "2", "--max-len", "8"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "toy.txt: 40 users, 30 items, protocol full" in result.output
    rows = {line.split("|")[1].strip(): line for line in result.output.splitlines() if line.startswith("| ")}
    assert {"sasrec", "gru4rec"} <= set(rows)
    assert " ± " in rows["sasrec"] and "| 2 |" in rows["sasrec"]  # two seeds: mean ± std
    assert "No published figures are on record" in result.output  # toy.txt is not a known dataset
    assert "| history | 8-15 |" in result.output  # the split by history length (every toy window holds 8 items)
    runs = mlflow.search_runs(experiment_names=["encore"], filter_string="tags.`encore.bench` = 'standard'")
    assert len(runs) == 4
    recs = [json.loads(x) for x in (tmp_path / "home" / "outputs" / "bench-standard" / "toy-full" / "runs.jsonl")
            .read_text().splitlines()]
    assert sorted((r["variant"], r["seed"]) for r in recs) == [("gru4rec", 0), ("gru4rec", 1), ("sasrec", 0),
                                                               ("sasrec", 1)]
    # The toy's targets never repeat an item of their window, so masking the history can only lift
    # a target: the same model's unmasked figures are at most the masked ones.
    assert all(r["unmasked"]["ndcg@10"] <= r["test"]["ndcg@10"] and r["wall_s"] > 0 for r in recs)
    again = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert again.exit_code == 0 and again.output.count("| sasrec | 2 |") == 1
    runs = mlflow.search_runs(experiment_names=["encore"], filter_string="tags.`encore.bench` = 'standard'")
    assert len(runs) == 4  # every (model, seed) was done: the rerun trained nothing


def _scripted_validation(monkeypatch: pytest.MonkeyPatch, scores: list[float]) -> None:
    import training.trainer as trainer

    it = iter(scores)
    monkeypatch.setattr(trainer, "validate", lambda *a, **k: {"ndcg@10": next(it), "hr@10": 0.0})


@pytest.mark.parametrize("kind", ["gru4rec", "bert4rec"])
def test_patience_waits_while_the_model_sits_at_the_popularity_plateau(kind: str, tmp_path: Path,
                                                                       monkeypatch) -> None:
    # GRU4Rec and BERT4Rec first learn the item unigram and stay at the popularity ranking for
    # epochs; a patience of 3 used to stop them there (their ablation rows = popularity).
    from training.trainer import PLATEAU_MARGIN, popularity_floor

    data, n = cyclic_data()
    tc = small_tc(epochs=9, patience=3)
    floor = popularity_floor(data, tc)
    assert floor is not None and floor > 0
    plateau = [floor, 1.1 * floor, 0.9 * floor, floor, 1.05 * floor]  # noise around popularity, 5 epochs
    _scripted_validation(monkeypatch, [*plateau, 3 * floor, 4 * floor, 3.5 * floor, 3.5 * floor])
    torch.manual_seed(0)
    model = build_id_encoder(kind, n, 10, {"hidden": 16, "inner": 32, "dropout": 0.0, "layers": 1})
    result = fit(model, data, tc, tmp_path / "a")
    assert [r["epoch"] for r in result.history] == list(range(1, 10))  # the old rule stopped after epoch 5
    assert result.best_epoch == 7 and not result.stopped_early
    assert PLATEAU_MARGIN > 1.1  # the plateau's noise must not count as having left it


def test_patience_counts_as_before_once_the_model_is_above_popularity(tmp_path: Path, monkeypatch) -> None:
    from training.trainer import popularity_floor

    data, n = cyclic_data()
    tc = small_tc(epochs=9, patience=3)
    floor = popularity_floor(data, tc)
    _scripted_validation(monkeypatch, [3 * floor, 4 * floor, 3 * floor, 3 * floor, 3.9 * floor, 5 * floor])
    torch.manual_seed(0)
    result = fit(SASRec(n_items=n, max_len=10, hidden=16, inner=32, dropout=0.0), data, tc, tmp_path)
    assert len(result.history) == 5 and result.best_epoch == 2 and result.stopped_early
    sampled = small_tc(eval={"protocol": "sampled", "num_candidates": 10})
    assert popularity_floor(data, sampled) is None  # sampled candidates: no popularity floor to compare


def test_the_paper_preset_trains_end_to_end_logs_each_filters_counts_and_saves_its_candidate_lists(
        trained_home: EncoreConfig) -> None:
    from encore.core.config import PRESETS
    from training.ablation import apply_changes
    from training.train import train

    # The small world has no listener with 1,000 plays: the paper's numbers, scaled to it.
    tc = apply_changes(_cfg(trained_home, model="sasrec", epochs=1).train,
                       {**PRESETS["paper"], "paper.min_user_plays": 200, "paper.min_track_plays": 3,
                        "paper.min_sessions": 10})
    cfg = trained_home.model_copy(update={"train": tc})
    out = train(cfg, register=False)
    params = mlflow.MlflowClient().get_run(out.run_id).data.params
    for step in ("raw", "min_user_plays", "min_track_plays", "sessions", "min_sessions"):
        assert int(params[f"data.paper.{step}.users"]) >= int(params["data.paper.min_sessions.users"]) > 0
    assert int(params["data.paper.raw.users"]) > int(params["data.paper.min_user_plays.users"])
    assert int(params["data.paper.min_track_plays.tracks"]) < int(params["data.paper.raw.tracks"])
    # Tested: every user with a listen after the global cutoff, validation users too.
    assert 0 < out.info["test_examples"] <= int(params["data.paper.min_sessions.users"])
    assert out.test["sampled_candidates"] == 199 and {"recall@20", "ndcg@20"} <= set(out.test)
    assert out.test_full and out.test_full["ndcg@10"] <= out.test["ndcg@10"]  # 199 negatives rank above fewer
    assert out.baseline["ndcg@10"] >= 0  # popularity ranked on the same lists

    saved = Path(mlflow.artifacts.download_artifacts(run_id=out.run_id, artifact_path="candidates_test.tsv"))
    rows = saved.read_text().splitlines()[1:]
    assert len(rows) == out.info["test_examples"]
    assert all(len(r.split("\t")[2].split()) == min(199, out.info["items"] - 1) for r in rows)
    again = train(cfg, register=False)  # the same seed gives the same lists
    assert Path(mlflow.artifacts.download_artifacts(run_id=again.run_id, artifact_path="candidates_test.tsv")
                ).read_text() == saved.read_text()


def test_the_llm_zeroshot_ranker_scores_the_paper_candidates_with_a_local_lm_and_registers_nothing(
        trained_home: EncoreConfig, tmp_path: Path) -> None:
    from encore.core.config import PRESETS
    from training.ablation import apply_changes
    from training.train import train

    lm = make_tiny_causal_lm(tmp_path / "lm", chat_template=None)
    tc = apply_changes(_cfg(trained_home, model="llm-zeroshot").train,
                       {**PRESETS["paper"], "paper.min_user_plays": 200, "paper.min_track_plays": 3,
                        "paper.min_sessions": 10, "zeroshot.backbone": str(lm)})
    out = train(trained_home.model_copy(update={"train": tc}))
    assert out.fit is None and out.trainable_params == 0 and out.model_version is None
    assert out.test["n"] == out.info["test_examples"] > 0 and 0 <= out.test["recall@10"] <= 1
    assert out.test_full == {}  # no retriever: it ranks candidates only
    # Without candidates and without a retriever it refuses at once, saying what to use.
    full = apply_changes(tc, {"eval.protocol": "full"})
    with pytest.raises(ValueError, match="preset paper"):
        train(trained_home.model_copy(update={"train": full}))
