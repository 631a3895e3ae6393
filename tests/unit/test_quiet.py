"""The quiet terminal: known third-party warnings are dropped, everything else still shows."""

from __future__ import annotations

import os
import warnings

import pytest

from encore.core.quiet import quiet_third_party


def _shown(verbose: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, category, *a, **k: seen.append(str(message)))
    for var in ("PYTHONWARNINGS", "MLFLOW_LOGGING_LEVEL", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(var, raising=False)
    with warnings.catch_warnings():
        warnings.resetwarnings()
        quiet_third_party(verbose)
        # As Feast's modules do on import: a filter ahead of the quiet ones.
        warnings.simplefilter("once", DeprecationWarning)
        warnings.warn("the noload loader strategy is deprecated", DeprecationWarning, stacklevel=1)
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed", FutureWarning, stacklevel=1)
        warnings.warn("the training split is empty", UserWarning, stacklevel=1)
        warnings.warn("some other library change", FutureWarning, stacklevel=1)
    return seen


def test_known_library_warnings_stay_off_the_terminal_even_behind_a_library_filter(monkeypatch) -> None:
    assert _shown(0, monkeypatch) == ["the training split is empty", "some other library change"]
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"  # MLflow reads it when imported


def test_verbose_shows_every_warning(monkeypatch) -> None:
    assert len(_shown(1, monkeypatch)) == 4
    assert "MLFLOW_LOGGING_LEVEL" not in os.environ
