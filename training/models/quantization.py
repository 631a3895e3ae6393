"""k-bit loading of E4SRec's frozen backbone (``train.e4srec.quantization``) with bitsandbytes.

4bit is QLoRA's recipe (Dettmers et al., 2023: NF4 weights, double-quantised constants, bf16
compute), the paper's seed code's setting; 8bit is LLM.int8 (Dettmers et al., 2022), as E4SRec
loads its LLaMA-2-13B. The quantised weights stay frozen; LoRA trains on top after PEFT's k-bit
preparation (``prepare_model_for_kbit_training``).

bitsandbytes is an optional extra (``pip install -e '.[gpu]'``) and is never imported at module
level: the CPU install neither has nor needs it. Neither path has been measured: no GPU machine
was available when this was written (docs/training-at-scale.md, "Quantised backbones").
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import BitsAndBytesConfig

__all__ = ["QUANTIZATIONS", "QuantizationUnavailable", "check_quantization_supported", "quantization_config",
           "quantized_load_kwargs"]

QUANTIZATIONS = ("none", "8bit", "4bit")
KEY = "train.e4srec.quantization"


class QuantizationUnavailable(RuntimeError):
    """A k-bit backbone was asked for where it cannot load (no CUDA, no bitsandbytes); the message says the fix."""


def check_quantization_supported(setting: str) -> None:
    """Return if ``setting`` can load here; else raise ``QuantizationUnavailable`` naming the key and the fix.

    Called before anything slow (reading the lake, training the ID encoder), so a wrong machine
    fails in a second, not after an hour of ID-encoder training.
    """
    if setting not in QUANTIZATIONS:
        raise ValueError(f"unknown {KEY} {setting!r}; expected one of {list(QUANTIZATIONS)}")
    if setting == "none":
        return
    if not torch.cuda.is_available():
        raise QuantizationUnavailable(
            f"{KEY}: {setting} needs a CUDA GPU (bitsandbytes' k-bit kernels run on CUDA) and this machine has "
            f"none. On CPU set {KEY}: none (the backbone then loads unquantised), or train on a GPU machine.")
    try:
        _import_bitsandbytes()
    except ImportError as exc:
        raise QuantizationUnavailable(
            f"{KEY}: {setting} needs bitsandbytes, which is not importable ({exc}). Install the GPU extra with "
            f"pip install -e '.[gpu]', or set {KEY}: none.") from None


def _import_bitsandbytes() -> None:
    import bitsandbytes  # noqa: F401  (the gpu extra; only its importability is checked)


def quantization_config(setting: str, compute_dtype: torch.dtype = torch.bfloat16) -> BitsAndBytesConfig | None:
    """transformers' ``BitsAndBytesConfig`` for ``setting``; None for "none".

    Building the config object needs transformers only (bitsandbytes is imported when a model loads
    with it), so this runs, and is tested, on CPU.
    """
    if setting not in QUANTIZATIONS:
        raise ValueError(f"unknown {KEY} {setting!r}; expected one of {list(QUANTIZATIONS)}")
    if setting == "none":
        return None
    from transformers import BitsAndBytesConfig

    if setting == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    # NF4 suits normally distributed weights; double quantisation stores the per-block scales in 8 bits
    # too (~0.37 bit a parameter saved, QLoRA §3). Matmuls dequantise to compute_dtype.
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def quantized_load_kwargs(setting: str) -> dict[str, Any]:
    """Extra ``from_pretrained`` kwargs for ``setting``: none for "none", else the config and a device map.

    Weights are quantised as they land on the GPU, so the placement is fixed at load time: the whole
    backbone on this process's GPU. Under the DeepSpeed launcher that is ``LOCAL_RANK`` (DeepSpeed
    selects the device only later, in ``deepspeed.initialize``); alone, the current CUDA device.
    """
    config = quantization_config(setting)
    if config is None:
        return {}
    check_quantization_supported(setting)
    device = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
    return {"quantization_config": config, "device_map": {"": device}}
