"""The cluster profile's engines on 127.0.0.1, started the way their own tools start them.

    Spark   a standalone master and one worker (``spark-class ...Master`` / ``...Worker``, the
            launcher that ships with pyspark; its sbin/start-*.sh scripts are not in the wheel)
    Ray     ``ray start --head --block``
    Redis   ``redis-server`` (Debian's package; .ci/run installs it when absent)
    MLflow  ``mlflow server`` with a SQLite backend and proxied artifacts

Each runs in its own process group, so stopping it stops everything it started (Ray's raylet and
GCS, the Spark executors) and nothing else: ``ray stop`` would also kill the suite's local Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyspark

BIN = Path(sys.executable).parent
SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    # An ephemeral port (32768+): outside Ray's worker port range (10002-19999).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    spark_master: str = ""
    spark_ui: str = ""
    ray_address: str = ""
    redis: str = ""
    mlflow: str = ""
    mlflow_artifacts: Path = Path()
    procs: list[tuple[str, subprocess.Popen, Path]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = self.root / f"{name}.log"
        proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})}, cwd=self.root)
        self.procs.append((name, proc, log))

    def wait(self, name: str, ready: Callable[[], bool], timeout: float = 90) -> None:
        proc, log = next((p, lg) for n, p, lg in self.procs if n == name)
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise ServiceError(f"{name} did not come up (exit {proc.poll()}); its log:\n{tail}")
            time.sleep(0.3)

    def stop(self) -> None:
        for _name, proc, _log in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False
    return check


def spark_master_state(ui: str) -> dict:
    with urllib.request.urlopen(f"{ui}/json/", timeout=5) as r:
        return json.load(r)


@contextmanager
def local_cluster(root: Path) -> Iterator[Cluster]:
    """Start all four services under ``root`` (logs, data, work dirs); stop them on exit."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise ServiceError("redis-server is not installed: `apt-get install redis-server` (.ci/run does it)")
    c = Cluster(root)
    env = {"SPARK_LOCAL_IP": "127.0.0.1", "RAY_AUTH_MODE": "disabled"}
    try:
        port = free_port()
        c.start("redis", [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", str(root)])
        c.redis = f"127.0.0.1:{port}"
        c.wait("redis", lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                                text=True).stdout.strip() == "PONG")

        port, ui = free_port(), free_port()
        c.spark_master, c.spark_ui = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui}"
        c.start("spark-master", [str(SPARK_CLASS), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                 "--port", str(port), "--webui-port", str(ui)], env)
        c.wait("spark-master", _http_ok(f"{c.spark_ui}/json/"))
        c.start("spark-worker", [str(SPARK_CLASS), "org.apache.spark.deploy.worker.Worker", c.spark_master,
                                 "--host", "127.0.0.1", "--cores", "2", "--memory", "2g",
                                 "--webui-port", str(free_port()), "--work-dir", str(root / "spark-work")], env)
        c.wait("spark-worker", lambda: spark_master_state(c.spark_ui).get("aliveworkers", 0) >= 1)

        port = free_port()
        c.ray_address = f"127.0.0.1:{port}"
        c.start("ray", [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                        "--port", str(port), "--num-cpus", "2", "--object-store-memory", str(256 * 1024 ** 2),
                        "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(root / "ray")],
                env)
        c.wait("ray", lambda: subprocess.run([str(BIN / "ray"), "status", "--address", c.ray_address],
                                             capture_output=True, env={**os.environ, **env}).returncode == 0)

        port = free_port()
        c.mlflow = f"http://127.0.0.1:{port}"
        c.mlflow_artifacts = root / "mlflow-artifacts"
        c.start("mlflow", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                           "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                           "--artifacts-destination", str(c.mlflow_artifacts)])
        c.wait("mlflow", _http_ok(f"{c.mlflow}/health"))
        yield c
    finally:
        c.stop()
