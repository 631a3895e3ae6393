"""k-bit E4SRec backbones (``train.e4srec.quantization``): config, bitsandbytes settings, plumbing, refusal.

No GPU and no bitsandbytes here: a "GPU" is ``torch.cuda.is_available`` patched to True with the
bitsandbytes import check passing, and ``AutoModel.from_pretrained`` is spied on so the tiny backbone loads
unquantised on CPU while the test reads what a real k-bit load would have been given.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from encore.core.config import E4SRecSettings, EncoreConfig
from tests.fixtures.tiny_llm import make_tiny_causal_lm
from training.data import DataError
from training.models import quantization
from training.models.e4srec import E4SRec, _load_backbone, read_prompt
from training.models.quantization import (
    QuantizationUnavailable,
    check_quantization_supported,
    quantization_config,
    quantized_load_kwargs,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

N_ITEMS = 20
ID_DIM = 8


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_causal_lm(tmp_path_factory.mktemp("llama") / "model", chat_template=None)


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """CUDA "available", a stub bitsandbytes, and a spy on from_pretrained; returns its recorded kwargs."""
    import peft
    import transformers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    # Not a stub module in sys.modules: PEFT caches whether bitsandbytes exists (lru_cache) and would
    # then dispatch LoRA to bitsandbytes layers for the rest of the session.
    monkeypatch.setattr(quantization, "_import_bitsandbytes", lambda: None)
    calls: list[dict[str, Any]] = []
    real_load = transformers.AutoModel.from_pretrained
    real_prepare = peft.prepare_model_for_kbit_training

    def load(path: str, **kwargs: Any) -> torch.nn.Module:
        calls.append({"path": str(path), **kwargs})
        kwargs.pop("quantization_config", None)
        kwargs.pop("device_map", None)
        return real_load(path, **kwargs)  # unquantised, on CPU

    def prepare(model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
        calls.append({"prepare": kwargs})
        return real_prepare(model, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", load)
    monkeypatch.setattr(peft, "prepare_model_for_kbit_training", prepare)
    return calls


def make_model(backbone: Path, **settings: Any) -> E4SRec:
    torch.manual_seed(0)
    dumped = E4SRecSettings(lora={"r": 4, "alpha": 8, "dropout": 0.0}, fusion_dim=16, modalities=["id"],
                            **settings).model_dump(mode="json")
    model = E4SRec(N_ITEMS, str(backbone), read_prompt(), dumped, ID_DIM, {}, max_len=8)
    model.set_item_tables(torch.randn(N_ITEMS + 1, ID_DIM), _no_content())
    return model


def _no_content() -> Any:
    from training.models.base import ContentTable

    return ContentTable(vectors={}, present={})


# -- config --

@pytest.mark.parametrize("setting", ["none", "8bit", "4bit"])
def test_config_accepts_none_8bit_and_4bit(setting: str) -> None:
    assert E4SRecSettings(quantization=setting).quantization == setting


def test_config_defaults_to_none_and_rejects_other_bit_widths() -> None:
    assert E4SRecSettings().quantization == "none"
    with pytest.raises(ValidationError, match="quantization"):
        E4SRecSettings(quantization="2bit")


# -- bitsandbytes settings --

def test_4bit_is_nf4_with_double_quantisation_and_bf16_compute() -> None:
    cfg = quantization_config("4bit")
    assert cfg is not None
    assert cfg.load_in_4bit and not cfg.load_in_8bit
    assert cfg.bnb_4bit_quant_type == "nf4"
    assert cfg.bnb_4bit_use_double_quant is True
    assert cfg.bnb_4bit_compute_dtype == torch.bfloat16


def test_8bit_is_llm_int8_and_none_gives_no_config() -> None:
    cfg = quantization_config("8bit")
    assert cfg is not None and cfg.load_in_8bit and not cfg.load_in_4bit
    assert quantization_config("none") is None
    assert quantized_load_kwargs("none") == {}
    with pytest.raises(ValueError, match="quantization"):
        quantization_config("16bit")


# -- refusal --

@pytest.mark.parametrize("setting", ["8bit", "4bit"])
def test_kbit_without_cuda_raises_naming_the_key_the_reason_and_the_fix(no_gpu: None, setting: str) -> None:
    with pytest.raises(QuantizationUnavailable) as err:
        check_quantization_supported(setting)
    message = str(err.value)
    assert "train.e4srec.quantization" in message and setting in message
    assert "CUDA" in message and "train.e4srec.quantization: none" in message


def test_none_is_supported_without_cuda(no_gpu: None) -> None:
    check_quantization_supported("none")


def test_cuda_without_bitsandbytes_asks_for_the_gpu_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import then raises ImportError
    with pytest.raises(QuantizationUnavailable, match=r"pip install -e '\.\[gpu\]'"):
        check_quantization_supported("4bit")


def test_kbit_load_kwargs_put_the_whole_backbone_on_this_ranks_gpu(fake_gpu: list[dict[str, Any]],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = quantized_load_kwargs("4bit")
    assert kwargs["quantization_config"].load_in_4bit and kwargs["device_map"] == {"": 0}
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert quantized_load_kwargs("8bit")["device_map"] == {"": 3}


def test_loading_a_kbit_backbone_without_cuda_fails_before_from_pretrained(llama_dir: Path, no_gpu: None,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("from_pretrained must not run")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", never)
    with pytest.raises(QuantizationUnavailable):
        _load_backbone(str(llama_dir), causal=True, quantization="4bit")


# -- plumbing --

def test_unquantised_backbone_loads_exactly_as_a_plain_from_pretrained(llama_dir: Path) -> None:
    from transformers import AutoModel

    default = _load_backbone(str(llama_dir), causal=True)
    none = _load_backbone(str(llama_dir), causal=True, quantization="none")
    plain = AutoModel.from_pretrained(str(llama_dir), use_safetensors=True)
    assert type(default) is type(none) is type(plain)
    assert not getattr(none, "is_loaded_in_4bit", False) and not getattr(none, "is_loaded_in_8bit", False)
    for a, b, c in zip(default.state_dict().values(), none.state_dict().values(), plain.state_dict().values(),
                       strict=True):
        assert a.dtype == b.dtype == c.dtype and torch.equal(a, b) and torch.equal(a, c)


def test_kbit_backbone_gets_the_bnb_config_a_device_map_and_kbit_preparation(
        llama_dir: Path, fake_gpu: list[dict[str, Any]]) -> None:
    base = _load_backbone(str(llama_dir), causal=True, quantization="4bit")
    load, prepare = fake_gpu
    assert load["quantization_config"].bnb_4bit_quant_type == "nf4"
    assert load["device_map"] == {"": 0} and load["use_safetensors"] is True
    # No gradient checkpointing: it would turn off the cache the shared prompt prefix hands on.
    assert prepare == {"prepare": {"use_gradient_checkpointing": False}}
    assert not any(p.requires_grad for p in base.parameters())


def test_quantization_travels_with_the_saved_model_so_loading_rebuilds_it_the_same_way(
        llama_dir: Path, tmp_path: Path, fake_gpu: list[dict[str, Any]]) -> None:
    model = make_model(llama_dir, quantization="8bit")
    assert model.quantization == "8bit" and model.config()["settings"]["quantization"] == "8bit"
    model.save(tmp_path / "e4srec")
    fake_gpu.clear()
    loaded = E4SRec.load(tmp_path / "e4srec")
    assert loaded.quantization == "8bit"
    load = next(c for c in fake_gpu if "path" in c)
    assert load["path"] == str(tmp_path / "e4srec" / "backbone") and load["quantization_config"].load_in_8bit


def test_unquantised_e4srec_records_none_in_its_config(llama_dir: Path) -> None:
    model = make_model(llama_dir)
    assert model.quantization == "none" and model.config()["settings"]["quantization"] == "none"


# -- the refusal comes first --

def test_train_refuses_a_kbit_e4srec_on_cpu_before_reading_any_data(tmp_path: Path, no_gpu: None) -> None:
    from training.train import train

    empty = {"home": tmp_path / "empty", "train": {"model": "e4srec", "e4srec": {"quantization": "4bit"}}}
    with pytest.raises(QuantizationUnavailable, match=r"train\.e4srec\.quantization: 4bit needs a CUDA GPU"):
        train(EncoreConfig.model_validate(empty))
    # The same empty workspace unquantised fails on its missing data: the refusal above came first.
    empty["train"]["e4srec"]["quantization"] = "none"  # type: ignore[index]
    with pytest.raises(DataError):
        train(EncoreConfig.model_validate(empty))
