"""The LLM zero-shot ranker: prompt text, candidate log-likelihoods, the prompt cache, re-ranking, persistence.

The LM is tiny and random (tests/fixtures/tiny_llm.py, with a vocabulary of the test's track names), so
these tests check the computation against a direct forward, never a ranking metric.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.fixtures.tiny_llm import make_tiny_causal_lm_for_texts
from training.models.base import SequenceModel, pad_logits
from training.models.llm_zeroshot import LLMZeroShot, build_prompt, item_text, read_prompt

os.environ.setdefault("HF_HUB_OFFLINE", "1")

N_ITEMS = 250
WORDS = ("love", "night", "blue", "river", "fire", "dream", "stone", "light", "rain", "gold", "road", "heart")


def catalogue() -> list[str]:
    """Item names 0..N_ITEMS (0 = padding): titles of 1-4 words, so candidates have different token counts."""
    names = [""]
    for i in range(1, N_ITEMS + 1):
        title = " ".join(WORDS[(i * (j + 3)) % len(WORDS)] for j in range(1 + i % 4))
        names.append(item_text(f"Band{i % 17}", title))
    return names


ITEMS = catalogue()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny tensors gain nothing from a second thread on a busy 2-core box (see test_e4srec.py).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The prompt's own words too, so the prompt is not a run of <unk>.
    return make_tiny_causal_lm_for_texts(tmp_path_factory.mktemp("llm") / "model", [*ITEMS[1:], read_prompt()])


def make_model(lm_dir: Path, **settings: Any) -> LLMZeroShot:
    model = LLMZeroShot(N_ITEMS, str(lm_dir), **settings)
    model.set_item_texts(ITEMS)
    return model


@pytest.fixture(scope="module")
def model(lm_dir: Path) -> LLMZeroShot:
    return make_model(lm_dir, batch_size=3)


def histories() -> tuple[torch.Tensor, torch.Tensor]:
    items = torch.tensor([[0, 0, 0, 5, 9, 14], [3, 1, 7, 2, 8, 6]])  # [B=2, L=6], left-padded
    return items, torch.full(items.shape, float("nan"))


def mixed_length_candidates(model: LLMZeroShot) -> torch.Tensor:
    cands = torch.tensor([[1, 2, 3, 4, 10, 11, 12], [20, 21, 22, 23, 5, 6, 7]])  # [B=2, C=7]
    lengths = {len(model.candidate_ids(int(c))) for c in cands.flatten()}
    assert len(lengths) >= 3, "the test needs candidates of several token lengths"
    return cands


def test_prompt_lists_last_max_history_items_oldest_first_skipping_padding(lm_dir: Path) -> None:
    model = make_model(lm_dir, max_history=3)
    row = torch.tensor([0, 0, 4, 5, 6, 7])  # newest last
    assert model.history_texts(row) == [ITEMS[5], ITEMS[6], ITEMS[7]]
    expected = ("A listener played these tracks, oldest first:\n"
                f"{ITEMS[5]}\n{ITEMS[6]}\n{ITEMS[7]}\n"
                "The next track they play is:")
    assert model.prompt_for(row) == expected
    assert build_prompt(["a – b", "c – d"], "H:\n{history}\nNext:\n") == "H:\na – b\nc – d\nNext:"
    assert item_text("Artist", "Title") == "Artist – Title"


def test_prompt_needs_one_history_placeholder_and_text_after_it() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        build_prompt(["a – b"], "no placeholder")
    with pytest.raises(ValueError, match="text after"):
        build_prompt(["a – b"], "History:\n{history}\n")


def test_candidate_tokens_continue_the_prompt_as_one_text_would(model: LLMZeroShot) -> None:
    row = histories()[0][0]
    prompt = model.prompt_for(row)
    for item in (1, 2, 3):
        whole = model.tokenizer(prompt + " " + ITEMS[item], add_special_tokens=False)["input_ids"]
        assert model.prompt_ids(row) == model.bos + whole[: len(whole) - len(model.candidate_ids(item))]
        assert model.prompt_ids(row) + model.candidate_ids(item) == model.bos + whole


def test_scores_equal_direct_log_likelihood_of_prompt_plus_candidate(lm_dir: Path, model: LLMZeroShot) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(lm_dir, use_safetensors=True).eval()
    tok = AutoTokenizer.from_pretrained(lm_dir)
    items, completion = histories()
    cands = torch.tensor([[1, 2], [3, 12]])
    scores = model.score_candidates(items, completion, cands)  # [2, 2]
    for b in range(2):
        prompt_ids = [tok.bos_token_id] + tok(build_prompt([ITEMS[i] for i in items[b].tolist() if i],
                                                           read_prompt()), add_special_tokens=False)["input_ids"]
        for c in range(2):
            cand_ids = tok(" " + ITEMS[int(cands[b, c])], add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = lm(input_ids=torch.tensor([prompt_ids + cand_ids])).logits[0]  # [P+T, V]
            logprobs = torch.log_softmax(logits, dim=-1)
            P = len(prompt_ids)
            direct = sum(float(logprobs[P - 1 + j, t]) for j, t in enumerate(cand_ids)) / len(cand_ids)
            assert math.isclose(float(scores[b, c]), direct, abs_tol=1e-4)


def test_prefix_cache_gives_same_scores_as_no_cache(model: LLMZeroShot) -> None:
    items, completion = histories()
    cands = mixed_length_candidates(model)  # C=7 in batches of 3: three cache copies per user
    cached = model.score_candidates(items, completion, cands)
    plain = model.score_candidates_uncached(items, completion, cands)
    assert cached.shape == (2, 7)
    torch.testing.assert_close(cached, plain, atol=1e-4, rtol=0)
    # Scoring again gives the same: the prompt's cache is copied, never extended in place.
    torch.testing.assert_close(model.score_candidates(items, completion, cands), cached, atol=0, rtol=0)


def test_prompt_runs_once_per_user_and_candidates_run_only_their_tokens(model: LLMZeroShot) -> None:
    items, completion = histories()
    cands = mixed_length_candidates(model)
    calls: list[tuple[int, ...]] = []
    hook = model.lm.register_forward_hook(lambda mod, args, kwargs, out: calls.append(tuple(kwargs["input_ids"].shape)),
                                          with_kwargs=True)
    try:
        model.score_candidates(items, completion, cands)
    finally:
        hook.remove()
    longest = max(len(model.candidate_ids(int(c))) for c in cands.flatten())
    prompts = [shape for shape in calls if shape[0] == 1 and shape[1] > longest]
    assert len(prompts) == 2  # one prompt forward per user
    assert len(calls) == 2 + 2 * math.ceil(7 / model.batch_size)
    assert all(shape[1] < longest for shape in calls if shape not in prompts)


def test_sum_and_mean_differ_exactly_by_token_count(lm_dir: Path, model: LLMZeroShot) -> None:
    items, completion = histories()
    cands = mixed_length_candidates(model)
    mean = model.score_candidates(items, completion, cands)
    total = make_model(lm_dir, batch_size=3, normalise="sum").score_candidates(items, completion, cands)
    counts = torch.tensor([[len(model.candidate_ids(int(c))) for c in row] for row in cands], dtype=torch.float32)
    torch.testing.assert_close(total, mean * counts, atol=1e-5, rtol=1e-6)


def test_unknown_normalisation_is_rejected(lm_dir: Path) -> None:
    with pytest.raises(ValueError, match="normalise"):
        LLMZeroShot(N_ITEMS, str(lm_dir), normalise="max")


def test_has_no_trainable_parameters(model: LLMZeroShot) -> None:
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 0


class FixedScores(SequenceModel):
    """A retriever stub: the same scores [n_items + 1] for every history."""

    kind = "fixed"

    def __init__(self, n_items: int, scores: torch.Tensor) -> None:
        super().__init__(n_items)
        self.fixed = scores

    def score(self, items: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        return pad_logits(self.fixed.expand(items.shape[0], -1))


def test_full_ranking_without_retriever_raises_a_clear_error(lm_dir: Path) -> None:
    items, completion = histories()
    with pytest.raises(ValueError, match="retrieval model"):
        make_model(lm_dir).score(items, completion)


def test_full_ranking_reranks_the_retrievers_top_k_above_the_rest(lm_dir: Path) -> None:
    model = make_model(lm_dir, batch_size=8)
    items, completion = histories()
    retriever_scores = torch.randn(N_ITEMS + 1, generator=torch.Generator().manual_seed(1))
    model.set_retriever(FixedScores(N_ITEMS, retriever_scores), top_k=10)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 0  # the retriever is not adopted
    scores = model.score(items, completion)  # [2, N_ITEMS + 1]
    assert scores.shape == (2, N_ITEMS + 1) and torch.isneginf(scores[:, 0]).all()
    top = retriever_scores[1:].topk(10).indices + 1  # [10]
    llm = model.score_candidates(items, completion, top.expand(2, -1))  # [2, 10]
    for b in range(2):
        ranking = scores[b, 1:].argsort(descending=True) + 1  # item ids, best first
        assert set(ranking[:10].tolist()) == set(top.tolist())
        assert ranking[:10].tolist() == top[llm[b].argsort(descending=True)].tolist()
        rest = ranking[10:]
        assert retriever_scores[rest].diff().le(0).all()  # the retriever's order, below the block
        torch.testing.assert_close(scores[b, top], llm[b])


def test_save_and_load_give_identical_scores(lm_dir: Path, model: LLMZeroShot, tmp_path: Path) -> None:
    items, completion = histories()
    cands = mixed_length_candidates(model)
    model.save(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["item_texts.json", "model.json"]
    loaded = LLMZeroShot.load(tmp_path / "saved")
    assert loaded.config() == model.config()
    assert loaded.item_texts == model.item_texts
    torch.testing.assert_close(loaded.score_candidates(items, completion, cands),
                               model.score_candidates(items, completion, cands), atol=0, rtol=0)


def test_200_candidate_task_gives_finite_scores_of_shape_b_by_c(lm_dir: Path) -> None:
    # A random LM ranks at chance: only the shape and finiteness are checked, no metric.
    model = make_model(lm_dir, batch_size=64)
    items, completion = histories()
    generator = torch.Generator().manual_seed(0)
    cands = torch.stack([torch.randperm(N_ITEMS, generator=generator)[:200] + 1 for _ in range(2)])  # [2, 200]
    scores = model.score_candidates(items, completion, cands)
    assert scores.shape == (2, 200)
    assert torch.isfinite(scores).all()
