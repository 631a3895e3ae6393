"""Promotion gates and rollback on a real MLflow registry, with models whose quality is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from encore.cli import cli
from encore.core.config import EncoreConfig
from mlflow import MlflowClient
from tests.conftest import copy_home
from tests.fixtures.registry import foreign_signature, known_quality_lists, register_ranker
from training import tracking
from training.promotion import PromotionError, promote, rollback


@pytest.fixture
def world(featured_home: EncoreConfig, tmp_path: Path) -> tuple[EncoreConfig, list[str], dict, dict]:
    """A private lake, its catalog, and per-user lists that hit (oracle) or miss (blind) the held-out track."""
    cfg = copy_home(featured_home, tmp_path / "home")
    return cfg, *known_quality_lists(cfg)


def _aliases(cfg: EncoreConfig) -> dict[str, str]:
    tracking.configure(cfg)
    return {a: str(v) for a, v in MlflowClient().get_registered_model(cfg.mlflow.model_name).aliases.items()}


def _tags(cfg: EncoreConfig, version: str) -> dict[str, str]:
    return MlflowClient().get_model_version(cfg.mlflow.model_name, version).tags


def test_a_first_promotion_needs_only_the_sanity_gates(world) -> None:
    cfg, catalog, _, blind = world
    v1 = register_ranker(cfg, catalog, blind)
    d = promote(cfg)
    assert d.decision == "promote" and d.acted and d.champion_version is None
    assert [g.name for g in d.gates] == ["loads", "signature", "item_map", "metrics_finite"]
    assert _aliases(cfg)["champion"] == v1
    assert d.challenger_metrics["hr@20"] == 0.0  # blind never lists the target: metrics are real
    tags = _tags(cfg, v1)
    assert tags["encore.promotion.decision"] == "promote"
    assert json.loads(tags["encore.promotion.challenger_metrics"])["ndcg@10"] == 0.0


def test_a_better_challenger_is_promoted_and_the_old_champion_kept_as_previous(world) -> None:
    cfg, catalog, oracle, blind = world
    v1 = register_ranker(cfg, catalog, blind)
    promote(cfg)
    v2 = register_ranker(cfg, catalog, oracle)
    d = promote(cfg)
    assert d.decision == "promote", d.reason
    assert d.challenger_metrics["ndcg@10"] == pytest.approx(1.0) and d.champion_metrics["ndcg@10"] == 0.0
    assert _aliases(cfg) == {"champion": v2, "previous-champion": v1, "challenger": v2}
    tags = _tags(cfg, v2)
    assert json.loads(tags["encore.promotion.champion_metrics"])["ndcg@10"] == 0.0
    assert "ndcg@10 1.0000 vs champion v1 0.0000" in tags["encore.promotion.reason"]


def test_a_worse_challenger_is_rejected_the_champion_stays_and_the_cli_exits_1(world) -> None:
    cfg, catalog, oracle, blind = world
    v1 = register_ranker(cfg, catalog, oracle)
    promote(cfg)
    v2 = register_ranker(cfg, catalog, blind)
    res = CliRunner().invoke(cli, ["--home", str(cfg.home), "promote"])
    assert res.exit_code == 1, res.output
    assert "REJECTED" in res.output and "[FAIL] better" in res.output
    assert _aliases(cfg)["champion"] == v1
    assert _tags(cfg, v2)["encore.promotion.decision"] == "reject"


def test_an_equal_challenger_does_not_replace_the_champion(world) -> None:
    cfg, catalog, oracle, _ = world
    register_ranker(cfg, catalog, oracle)
    promote(cfg)
    register_ranker(cfg, catalog, oracle)
    assert promote(cfg).decision == "reject"


def test_non_finite_scores_fail_the_metrics_gate(world) -> None:
    cfg, catalog, oracle, _ = world
    register_ranker(cfg, catalog, oracle, nan=True)
    d = promote(cfg)
    assert d.decision == "reject" and "champion" not in _aliases(cfg)
    gate = next(g for g in d.gates if g.name == "metrics_finite")
    assert not gate.passed and "non-finite scores" in gate.detail


def test_an_incompatible_signature_is_rejected_before_any_evaluation(world) -> None:
    cfg, catalog, oracle, _ = world
    register_ranker(cfg, catalog, oracle, sig=foreign_signature())
    d = promote(cfg)
    assert d.decision == "reject"
    gate = next(g for g in d.gates if g.name == "signature")
    assert not gate.passed and "item_seq" in gate.detail
    assert d.challenger_metrics == {}  # not evaluated


def test_a_model_of_another_catalog_fails_the_item_map_gate(world) -> None:
    cfg, _, oracle, _ = world
    register_ranker(cfg, [f"elsewhere-{i}" for i in range(50)], oracle)
    d = promote(cfg)
    gate = next(g for g in d.gates if g.name == "item_map")
    assert d.decision == "reject" and not gate.passed and gate.detail.startswith("0.0%")


def test_a_dry_run_decides_but_moves_no_alias_and_writes_no_tag(world) -> None:
    cfg, catalog, oracle, _ = world
    v1 = register_ranker(cfg, catalog, oracle)
    d = promote(cfg, dry_run=True)
    assert d.decision == "promote" and not d.acted
    assert "champion" not in _aliases(cfg)
    assert not any(k.startswith("encore.promotion.") for k in _tags(cfg, v1))


def test_rollback_points_champion_back_at_the_previous_one(world) -> None:
    cfg, catalog, oracle, blind = world
    with pytest.raises(PromotionError, match="no @previous-champion"):
        rollback(cfg)
    v1 = register_ranker(cfg, catalog, blind)
    promote(cfg)
    v2 = register_ranker(cfg, catalog, oracle)
    promote(cfg)
    res = CliRunner().invoke(cli, ["--home", str(cfg.home), "rollback"])
    assert res.exit_code == 0, res.output
    aliases = _aliases(cfg)
    assert aliases["champion"] == v1 and "previous-champion" not in aliases
    assert "encore.rolled_back_at" in _tags(cfg, v2)
