"""Third-party noise a user cannot act on, kept off the terminal unless ``-v`` asks for it.

Where Encore causes a message, the cause is fixed at its source instead (scoring and embed leave
Ray a CPU for its own tasks; the MLflow model logs the venv's exact requirements; Ray Data's
context is set without deprecated flags; DeepSpeed is told the accelerator on a CPU machine).
What is left here comes from inside the libraries: each entry says which call emits it.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable
from typing import Any

# (category, message regex): warnings raised inside libraries by calls Encore makes as documented.
_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # ibis inside Feast, SQLAlchemy inside MLflow (SADeprecationWarning is one), Ray's own modules.
    (DeprecationWarning, ""),
    # Feast's Spark offline store (cluster profile), on every use.
    (RuntimeWarning, r"The spark (data source API|offline store) is an experimental"),
    # peft's PeftModel reads transformers' deprecated property `is_gradient_checkpointing`.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    # MLflow 3 on logging a pyfunc whose python_model is an instance (Encore's is a small class).
    (UserWarning, r".*[Cc]loud[Pp]ickle"),
)

# (logger, message regex): the same kind of notice, sent as a log record rather than a warning.
_LOG_RECORDS: tuple[tuple[str, str], ...] = (
    # mlflow.pyfunc.log_model with an instance as python_model: the model is a small class whose
    # code travels in code_paths; the pickle holds no state.
    ("mlflow.pyfunc", r".*CloudPickle"),
)


class _DropMatching(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())

# Loggers whose INFO lines narrate library internals (MLflow creating its tables, Ray Data's
# progress-bar settings); their warnings and errors still show.
_LIBRARY_LOGGERS = ("py4j", "pyspark", "feast", "ibis", "mlflow", "alembic", "ray", "DeepSpeed", "deepspeed",
                    "urllib3", "filelock")


def _known(message: Warning | str, category: type[Warning]) -> bool:
    text = str(message)
    return any(issubclass(category, c) and re.match(m, text) for c, m in _WARNINGS)


def _unless_known(show: Callable[..., None]) -> Callable[..., None]:
    if getattr(show, "encore_quiet", False):  # already wrapped (a second CLI call in one process)
        return show

    def showwarning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if not _known(message, category):
            show(message, category, *args, **kwargs)

    showwarning.encore_quiet = True  # type: ignore[attr-defined]
    return showwarning


def quiet_third_party(verbose: int) -> None:
    """Filter the known third-party noise; ``verbose`` >= 1 keeps everything (the library INFO too)."""
    if verbose >= 1:
        return
    for category, message in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    # Feast's modules put `simplefilter("once", DeprecationWarning)` ahead of these filters when
    # they are imported, so the same list also guards the display.
    warnings.showwarning = _unless_known(warnings.showwarning)
    # MLflow sets its loggers' level from this variable when it is imported; its artifact
    # downloads (every model load) draw a bar each.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name, pattern in _LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) for f in logger.filters):
            logger.addFilter(_DropMatching(pattern))
    # Worker processes (Ray actors, DeepSpeed ranks) inherit these through the environment.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
    # transformers' per-file "Loading weights" bar on a model a few MB big.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Ray Data warns once per process that its own bars are off: Encore draws its own.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


__all__ = ["quiet_third_party"]
