"""The single-process distributed env DeepSpeed needs: a port of its own, a launcher's env kept."""

from __future__ import annotations

import os
import socket

import pytest

from training.trainer import SELF_SET_ENV, single_process_env

DIST_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", SELF_SET_ENV)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in DIST_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_a_child_does_not_reuse_the_port_its_parents_store_holds(clean_env: pytest.MonkeyPatch) -> None:
    # The parent trained in-process: its store listens on MASTER_PORT, and the child inherits the env.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"),
                           ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port)),
                           (SELF_SET_ENV, str(os.getpid() + 1))):
            clean_env.setenv(key, value)
        single_process_env()
        assert os.environ["MASTER_PORT"] != str(port)
        assert bindable(int(os.environ["MASTER_PORT"]))
        assert os.environ[SELF_SET_ENV] == str(os.getpid())


def test_the_same_process_keeps_its_port_across_trainings(clean_env: pytest.MonkeyPatch) -> None:
    single_process_env()
    first = os.environ["MASTER_PORT"]
    single_process_env()  # torch.distributed may already be up on `first` in this process
    assert os.environ["MASTER_PORT"] == first
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("0", "1", "0")


def test_a_launchers_env_and_an_exported_port_are_kept(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MASTER_PORT", "29512")  # the operator's choice, no launcher
    single_process_env()
    assert os.environ["MASTER_PORT"] == "29512"

    for key in DIST_KEYS:
        clean_env.delenv(key, raising=False)
    for key, value in (("RANK", "3"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1"),
                       ("MASTER_ADDR", "10.0.0.7"), ("MASTER_PORT", "29500")):
        clean_env.setenv(key, value)  # as deepspeed or torchrun start a rank
    single_process_env()
    assert (os.environ["RANK"], os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("3", "10.0.0.7", "29500")
    assert SELF_SET_ENV not in os.environ
