"""One way to get Ray, from the typed config: a local Ray by default, a cluster by address (jobs, scoring)."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

from encore.core.config import RayConfig

log = logging.getLogger(__name__)


def get_ray(cfg: RayConfig) -> Any:
    """Connect to (or start) Ray once per process and return the ``ray`` module.

    Local: ``num_cpus`` and an explicit object store (Ray's default, 30% of RAM, starves Spark on a
    shared machine). Cluster: ``address`` (``ray://host:10001`` or ``host:6379``); the cluster's
    own sizes apply.
    """
    # Ray 2.60 turns token auth on by default and writes a token under ~/.ray; a local,
    # single-user Ray needs none. A cluster profile sets its own RAY_AUTH_MODE in the environment.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # actors inherit it: no model download, ever
    import ray

    if ray.is_initialized():
        return ray
    common: dict[str, Any] = dict(include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)
    # Workers import jobs/ and encore/ from the installed package; they also need the offline flag.
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}}
    if cfg.address:
        ray.init(address=cfg.address, runtime_env=runtime_env, **common)
    else:
        ray.init(num_cpus=cfg.num_cpus, object_store_memory=cfg.object_store_memory_mb * 1024 * 1024,
                 runtime_env=runtime_env, **common)
    ctx = ray.data.DataContext.get_current()
    # Encore's jobs draw their own progress (encore.core.progress: tracks embedded, users scored);
    # Ray Data's per-operator bars beside them, or its progress block logged every 10 s without
    # a terminal, would say the same thing twice. Its loggers are configured at import with their
    # own INFO level: make them follow the application's level for "ray" (WARNING unless -v).
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.getLogger("ray").getEffectiveLevel())
    log.info("ray: %s", {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")})
    return ray


def gpus_per_actor(ray: Any, wanted: float) -> float:
    """``wanted`` where the cluster has GPUs, else 0: the same config runs on CPU-only machines."""
    return wanted if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


@contextlib.contextmanager
def actor_options() -> Iterator[None]:
    """Around a ``map_batches`` that passes actor options Ray Data has no named parameter for
    (``max_restarts``): Ray 2.60 warns that such ``**ray_remote_args`` are deprecated, yet offers
    no other way to set them. Only that one warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
        yield
