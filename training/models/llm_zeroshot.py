"""LLM zero-shot ranker: a local causal LM reads the history as text and scores each candidate's name.

Paper: "Multimodal Music Recommendation System using LLMs", which evaluates LLMs zero-shot by
prompting a causal LM with the listening history as text. Nothing is trained: any local Hugging
Face causal LM folder works as the backbone.

    prompt    = template with {history} = the last ``max_history`` items, one "artist – title" a line,
                oldest first (padding skipped)
    cand_c    = " " + "artist – title" of candidate c, tokens t_1..t_n
    score(c)  = (1/n) Σ_j log p(t_j | prompt, t_<j)        ("mean": length-normalised, the default)
              =       Σ_j log p(t_j | prompt, t_<j)        ("sum": total log-likelihood)

Cost: per user, the prompt runs once (``use_cache=True``); its key/value cache is copied for each
batch of ``batch_size`` candidates, which then run only their own tokens (right-padded, positions
continuing after the prompt). The first candidate token's log-prob comes from the prompt's last
logits, so a one-token candidate needs no forward at all. ``score_candidates_uncached`` runs each
prompt + candidate in one plain forward: the reference the cached path is tested against.

Token boundary: a candidate continues the prompt after a space (the template ends on "is:"), so it
is tokenised as the text after the template's tail, ids(tail + " " + text) minus ids(tail), not as
ids(" " + text) alone: a SentencePiece tokenizer would prepend its dummy-prefix token to a lone
" text", a token that never occurs mid-sentence. Where the tail's ids are not a prefix (a merge
across the boundary), ids(" " + text) is the fallback, logged. Candidates are tokenised once, in
``set_item_texts``. The prompt gets the tokenizer's BOS (if it has one) and no other special token.

Full ranking (``score``): an LLM cannot score every track of a real catalogue, so this model
re-ranks a retrieval model's candidates (``set_retriever``: e.g. the top 200 of SASRec). The top_k
items rank first, in LLM order; every other item keeps the retriever's order below them. Without a
retriever, ``score`` raises: use the sampled (200-candidate) protocol, which calls
``score_candidates``. The retriever is not saved with this model: set it again after ``load``.

Departures from the paper:
    - Each candidate is scored by the likelihood of its name (the rule Encore's issue fixes; other
      rules must be measured against it), not by generating an answer and parsing it, which would
      leave candidates unscored when the answer names no candidate or cannot be parsed.
    - Completion ratios are ignored (the history text has no place for them), as is any chat
      template: the prompt is raw text, which base and instruct models both accept.
    - Full ranking is a re-ranking of a retriever's top_k (above).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from training.models.base import Batch, SequenceModel, pad_logits

__all__ = ["DEFAULT_PROMPT", "HISTORY", "LLMZeroShot", "build_prompt", "item_text", "read_prompt"]

log = logging.getLogger(__name__)

DEFAULT_PROMPT = Path(__file__).resolve().parents[1] / "prompts" / "llm_zeroshot_v1.txt"
HISTORY = "{history}"
NORMALISATIONS = ("mean", "sum")


def item_text(artist: str, title: str) -> str:
    """A track as the prompt and the candidates name it: "artist – title" (an en dash)."""
    return f"{artist} – {title}"


def read_prompt(path: Path | None = None) -> str:
    """The prompt template text (None = ``training/prompts/llm_zeroshot_v1.txt``)."""
    return (path or DEFAULT_PROMPT).read_text(encoding="utf-8")


def _split_template(template: str) -> tuple[str, str]:
    if template.count(HISTORY) != 1:
        raise ValueError(f"the zero-shot prompt needs exactly one {HISTORY} placeholder, "
                         f"found {template.count(HISTORY)}")
    before, after = template.split(HISTORY)
    # A file's trailing newline would put "\n" between the prompt and " artist – title": end on its last word.
    after = after.rstrip()
    if not after.strip():
        raise ValueError(f"the zero-shot prompt needs text after {HISTORY}: the candidate's name continues it")
    return before, after


def build_prompt(history_texts: list[str], template: str) -> str:
    """The template with ``{history}`` replaced by one text a line, in the given order (oldest first).

    ``str.replace``, not ``format``: a track name may hold braces.
    """
    before, after = _split_template(template)
    return before + "\n".join(history_texts) + after


def _clean(text: str) -> str:
    # One line per history item: a newline inside a title would read as two tracks.
    return " ".join(str(text).split())


class LLMZeroShot(SequenceModel):
    """Ranks candidates by a frozen causal LM's likelihood of their "artist – title" after the history."""

    kind = "llm-zeroshot"

    def __init__(self, n_items: int, backbone: str, prompt: str | None = None, max_history: int = 20,
                 batch_size: int = 64, normalise: str = "mean") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(n_items)
        # Settings first: bad values fail before the backbone loads.
        if normalise not in NORMALISATIONS:
            raise ValueError(f"unknown normalise {normalise!r}; expected one of {NORMALISATIONS}")
        if max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {max_history}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if prompt is None:
            prompt = read_prompt()
        elif HISTORY not in prompt and Path(prompt).is_file():
            prompt = read_prompt(Path(prompt))
        _, self.tail = _split_template(prompt)
        self.prompt = prompt  # the template text itself, so a saved model does not depend on the file
        self.backbone_path = str(backbone)
        self.max_history, self.batch_size, self.normalise = max_history, batch_size, normalise

        self.lm = AutoModelForCausalLM.from_pretrained(self.backbone_path, use_safetensors=True).eval()
        self.lm.requires_grad_(False)  # no trainable parameters: the trainer skips fitting
        self.tokenizer = AutoTokenizer.from_pretrained(self.backbone_path)
        self.bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []

        self.item_texts: list[str] = []
        # Candidate token ids, flat with offsets (CSR): item i's ids are flat[offsets[i]:offsets[i + 1]].
        # A padded [n_items + 1, T_max] table would cost T_max (the longest name) for every item.
        self._flat = torch.zeros(0, dtype=torch.long)
        self._offsets = torch.zeros(0, dtype=torch.long)
        self._retriever: list[SequenceModel] = []  # a list, not an attribute: nn.Module would adopt its parameters
        self.top_k = 200

    # -- item texts and prompts --
    def set_item_texts(self, texts: list[str]) -> None:
        """Names of items 0..n_items as "artist – title" (``item_text``); texts[0] (padding) is unused.

        Tokenises every candidate continuation once (see the module docstring for the boundary).
        """
        if len(texts) != self.n_items + 1:
            raise ValueError(f"item texts must be [{self.n_items + 1}] (row 0 padding), got {len(texts)}")
        self.item_texts = [""] + [_clean(t) for t in texts[1:]]
        ids = self._continuation_ids(self.item_texts[1:])
        empty = [i + 1 for i, seq in enumerate(ids) if not seq]
        if empty:
            raise ValueError(f"items {empty[:5]} have names that tokenise to nothing; give them a text")
        lengths = torch.tensor([0] + [len(seq) for seq in ids])  # [n_items + 1]; padding has no tokens
        self._offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])  # [n_items + 2]
        self._flat = torch.tensor([t for seq in ids for t in seq], dtype=torch.long)  # [total tokens]

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _continuation_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of " " + text as it reads after the template's tail, one list per text."""
        anchor = self._ids([self.tail])[0]
        anchored = self._ids([self.tail + " " + t for t in texts])
        bare = [i for i, seq in enumerate(anchored) if seq[: len(anchor)] != anchor]
        out = [seq[len(anchor):] for seq in anchored]
        if bare:
            log.warning("llm-zeroshot: %d of %d names merge with the prompt's last token; tokenised alone",
                        len(bare), len(texts))
            for i, seq in zip(bare, self._ids([" " + texts[i] for i in bare]), strict=True):
                out[i] = seq
        return out

    def candidate_ids(self, item: int) -> list[int]:
        """The cached continuation token ids of one item."""
        return self._flat[self._offsets[item]: self._offsets[item + 1]].tolist()

    def history_texts(self, row: torch.Tensor) -> list[str]:
        """The last ``max_history`` items of one left-padded history [L] as texts, oldest first."""
        self._check_ready()
        real = [int(i) for i in row.tolist() if i != 0]
        return [self.item_texts[i] for i in real[-self.max_history:]]

    def prompt_for(self, row: torch.Tensor) -> str:
        """The prompt text for one history [L]."""
        return build_prompt(self.history_texts(row), self.prompt)

    def prompt_ids(self, row: torch.Tensor) -> list[int]:
        """BOS (if any) + the prompt's tokens for one history [L]."""
        return self.bos + self._ids([self.prompt_for(row)])[0]

    # -- scoring --
    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def _check_ready(self) -> None:
        if not self.item_texts:
            raise RuntimeError("llm-zeroshot has no item names: call set_item_texts first")

    def _tokens(self, cands: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded continuation ids [n, T] and their lengths [n] for candidate items [n]."""
        starts, ends = self._offsets[cands], self._offsets[cands + 1]
        lengths = ends - starts  # [n]
        T = max(int(lengths.max()), 1)
        cols = torch.arange(T)
        valid = cols < lengths.unsqueeze(1)  # [n, T]
        # Padding reads token 0: any valid id works, the attention mask and the reduction skip it.
        index = (starts.unsqueeze(1) + cols).clamp_max(len(self._flat) - 1)  # in range; padding is masked next
        tokens = torch.where(valid, self._flat[index], 0)
        return tokens.to(self.device), lengths.to(self.device)

    def _reduce(self, logprobs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per-token log-probs [n, T] and lengths [n] -> scores [n] (mean or sum over real tokens)."""
        valid = torch.arange(logprobs.shape[1], device=logprobs.device) < lengths.unsqueeze(1)
        total = torch.where(valid, logprobs, 0.0).sum(dim=1)  # [n]
        if self.normalise == "mean":
            total = total / lengths.clamp_min(1)
        # Padding candidates (item 0) have no tokens: they never rank.
        return total.masked_fill(lengths == 0, float("-inf"))

    @staticmethod
    def _token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """log p(tokens) from logits [n, T, V] and tokens [n, T] -> [n, T], in fp32.

        gather − logsumexp rather than log_softmax: no second [n, T, V] tensor on a 100k+ vocabulary.
        """
        logits = logits.float()
        return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)

    def _score_user_cached(self, prompt: list[int], cands: torch.Tensor) -> torch.Tensor:
        """One user's prompt (token ids) and candidates [C] -> scores [C], sharing the prompt's cache."""
        P = len(prompt)
        out = self.lm(input_ids=torch.tensor([prompt], device=self.device), use_cache=True)
        prefix = out.cache  # transformers 5: ``cache`` (``past_key_values`` is its deprecated name)
        first_logits = out.logits[0, -1].float()  # [V]: the prompt's last position predicts t_1
        first_norm = first_logits.logsumexp(dim=-1)  # scalar; log p(t_1) = logit[t_1] - this
        scores = []
        for start in range(0, len(cands), self.batch_size):
            tokens, lengths = self._tokens(cands[start: start + self.batch_size])  # [n, T], [n]
            n, T = tokens.shape
            logprobs = torch.empty(n, T, device=self.device)
            logprobs[:, 0] = first_logits[tokens[:, 0]] - first_norm
            if T > 1:
                # A forward appends to its cache in place: each batch gets its own copy, repeated n times.
                cache = copy.deepcopy(prefix)
                cache.batch_repeat_interleave(n)
                # Inputs t_1..t_{T-1} predict t_2..t_T; the last token predicts nothing we score.
                inputs = tokens[:, :-1]  # [n, T-1]
                real = torch.arange(T - 1, device=self.device) < lengths.unsqueeze(1)  # [n, T-1]
                mask = torch.cat([torch.ones(n, P, dtype=torch.long, device=self.device), real.long()], dim=1)
                positions = (P + torch.arange(T - 1, device=self.device)).expand(n, T - 1)  # after the prompt
                logits = self.lm(input_ids=inputs, attention_mask=mask, position_ids=positions, cache=cache,
                                 use_cache=True).logits  # [n, T-1, V]
                logprobs[:, 1:] = self._token_logprobs(logits, tokens[:, 1:])
            scores.append(self._reduce(logprobs, lengths))
        return torch.cat(scores)  # [C]

    def _score_user_uncached(self, prompt: list[int], cands: torch.Tensor) -> torch.Tensor:
        """Reference: each prompt + candidate in one plain forward, no cache -> scores [C]."""
        P = len(prompt)
        prompt_t = torch.tensor(prompt, device=self.device)
        scores = []
        for start in range(0, len(cands), self.batch_size):
            tokens, lengths = self._tokens(cands[start: start + self.batch_size])  # [n, T], [n]
            n, T = tokens.shape
            sequence = torch.cat([prompt_t.expand(n, P), tokens], dim=1)  # [n, P+T], right-padded
            real = torch.arange(T, device=self.device) < lengths.unsqueeze(1)
            mask = torch.cat([torch.ones(n, P, dtype=torch.long, device=self.device), real.long()], dim=1)
            logits = self.lm(input_ids=sequence, attention_mask=mask, use_cache=False).logits  # [n, P+T, V]
            # Position P-1+j predicts candidate token j.
            scores.append(self._reduce(self._token_logprobs(logits[:, P - 1: P + T - 1], tokens), lengths))
        return torch.cat(scores)  # [C]

    def _score_all(self, items: torch.Tensor, candidates: torch.Tensor, cached: bool) -> torch.Tensor:
        self._check_ready()
        if items.shape[0] != candidates.shape[0]:
            raise ValueError(f"items [B, L] and candidates [B, C] disagree on B: {items.shape[0]} vs "
                             f"{candidates.shape[0]}")
        began = time.perf_counter()
        score_user = self._score_user_cached if cached else self._score_user_uncached
        cands = candidates.long().cpu()  # indexes the CPU token table
        with torch.no_grad():
            rows = [score_user(self.prompt_ids(items[b].cpu()), cands[b]) for b in range(items.shape[0])]
        scores = torch.stack(rows).to(items.device)  # [B, C]
        log.debug("llm-zeroshot: %d users x %d candidates in %.2fs (%s)", *candidates.shape,
                  time.perf_counter() - began, "cached prompt" if cached else "uncached")
        return scores

    def score_candidates(self, items: torch.Tensor, completion: torch.Tensor,
                         candidates: torch.Tensor) -> torch.Tensor:
        """Scores of candidate items for each history: items/completion [B, L], candidates [B, C] -> [B, C].

        Higher is better: the mean (or sum) log-likelihood of each candidate's name after the prompt.
        Completion is ignored (module docstring). Candidate 0 (padding) scores -inf.
        """
        return self._score_all(items, candidates, cached=True)

    def score_candidates_uncached(self, items: torch.Tensor, completion: torch.Tensor,
                                  candidates: torch.Tensor) -> torch.Tensor:
        """``score_candidates`` without the prompt cache (one plain forward per prompt + candidate): [B, C]."""
        return self._score_all(items, candidates, cached=False)

    # -- full ranking: re-rank a retriever's top_k --
    def set_retriever(self, model: SequenceModel, top_k: int = 200) -> None:
        """The model whose top_k items ``score`` re-ranks (not saved: set it again after ``load``)."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self._retriever = [model.eval()]
        self.top_k = top_k

    @property
    def retriever(self) -> SequenceModel | None:
        return self._retriever[0] if self._retriever else None

    @property
    def ranks_all_items(self) -> bool:
        """Whether ``score`` (full ranking) works: only with a retriever to re-rank."""
        return self.retriever is not None

    def score(self, items: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        """Full ranking, items/completion [B, L] -> [B, n_items + 1], by re-ranking a retriever's top_k.

        The retriever's top_k items (padding excluded) rank above every other item, in LLM order; the
        others keep the retriever's order below them. Column 0 is -inf. Without a retriever this
        raises: scoring every item of a catalogue with an LLM is not feasible.
        """
        if self.retriever is None:
            raise ValueError("llm-zeroshot cannot score every item of the catalogue: full ranking needs a "
                             "retrieval model whose top_k it re-ranks (set_retriever, e.g. SASRec's top 200); "
                             "or evaluate with the sampled 200-candidate protocol (score_candidates)")
        with torch.no_grad():
            base = pad_logits(self.retriever.score(items, completion).float())  # [B, n_items + 1]
        k = min(self.top_k, self.n_items)
        top = base[:, 1:].topk(k, dim=1).indices + 1  # [B, k], item ids
        reranked = self.score_candidates(items, completion, top)  # [B, k]
        in_top = torch.zeros_like(base, dtype=torch.bool).scatter_(1, top, True)  # [B, n_items + 1]
        others = base.masked_fill(in_top, float("-inf"))
        # Shift the others so their best sits 1 below the worst re-ranked score: order kept, block below.
        best_other = others.max(dim=1, keepdim=True).values  # [B, 1]; -inf when nothing is left
        floor = reranked.min(dim=1, keepdim=True).values - 1.0  # [B, 1]
        shifted = torch.where(torch.isfinite(best_other), others - best_other + floor, others)
        return pad_logits(shifted.scatter(1, top, reranked))  # [B, n_items + 1]

    def loss(self, batch: Batch) -> torch.Tensor:
        raise RuntimeError("the LLM zero-shot ranker has no training")

    # -- persistence: model.json + item_texts.json; the LM stays at its own path --
    def config(self) -> dict[str, Any]:
        return {"n_items": self.n_items, "backbone": self.backbone_path, "prompt": self.prompt,
                "max_history": self.max_history, "batch_size": self.batch_size, "normalise": self.normalise}

    def save(self, folder: Path) -> None:
        """model.json (kind + settings) and item_texts.json; no weights (the backbone is a local path)."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.json").write_text(json.dumps({"kind": self.kind, "config": self.config()}, indent=2))
        (folder / "item_texts.json").write_text(json.dumps(self.item_texts, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> LLMZeroShot:
        meta = json.loads((folder / "model.json").read_text())
        model = cls(**meta["config"])
        texts_file = folder / "item_texts.json"
        if texts_file.is_file():
            texts = json.loads(texts_file.read_text(encoding="utf-8"))
            if texts:
                model.set_item_texts(texts)
        return model.eval()
