"""E4SRec (frozen LLM + LoRA over fused item vectors), its fusion modes and the content baseline.

Backbones are tiny and random (a 2-layer Llama from tests/fixtures, a 2-layer BERT built here), so
these tests check the plumbing: shapes, what is trained, missing/unknown handling, persistence.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from encore.core.config import E4SRecSettings
from tests.fixtures.tiny_llm import make_tiny_causal_lm
from training.models.base import ContentTable
from training.models.content import NO_CONTENT, ContentBaseline
from training.models.e4srec import DEFAULT_PROMPT, E4SRec, read_prompt
from training.models.fusion import FUSION_MODES, build_fusion

os.environ.setdefault("HF_HUB_OFFLINE", "1")

N_ITEMS = 20
ID_DIM = 8
CONTENT_DIMS = {"lyrics": 6, "audio": 4, "meta": 5}
NAN = float("nan")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny tensors gain nothing from intra-op threads, and on a busy 2-core box the second thread's
    # spin-waits made each step ~400x slower (1.2 s instead of 3 ms).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_causal_lm(tmp_path_factory.mktemp("llama") / "model", chat_template=None)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("bert") / "model"
    path.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "below", "is", "a", "history", "next", "track", ":", "."]
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    return path


def content_table(seed: int = 0) -> ContentTable:
    g = torch.Generator().manual_seed(seed)
    vectors = {m: torch.randn(N_ITEMS + 1, d, generator=g) for m, d in CONTENT_DIMS.items()}
    present = {m: torch.rand(N_ITEMS + 1, generator=g) > 0.3 for m in CONTENT_DIMS}
    for m in CONTENT_DIMS:
        present[m][0] = False
        vectors[m][~present[m]] = 0.0
    return ContentTable(vectors=vectors, present=present)


def make_model(backbone: Path, **settings: Any) -> E4SRec:
    torch.manual_seed(0)
    lora = {"r": 4, "alpha": 8, "dropout": 0.0} | settings.pop("lora", {})
    settings = {"fusion_dim": 16, "sampled": {"negatives": 6}} | settings
    dumped = E4SRecSettings(lora=lora, **settings).model_dump(mode="json")
    model = E4SRec(N_ITEMS, str(backbone), read_prompt(), dumped, ID_DIM, CONTENT_DIMS, max_len=8)
    model.set_item_tables(torch.randn(N_ITEMS + 1, ID_DIM), content_table())
    model.set_item_counts(torch.arange(N_ITEMS + 1))  # the sampled head's popularity half
    return model


def make_batch() -> dict[str, torch.Tensor]:
    # Left-padded windows [B, L+1], newest last; the last column is the target.
    items = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 7, 8], [0, 0, 0, 9, 10, 11]])
    completion = torch.tensor([[NAN, NAN, 0.5, NAN, 1.0, 0.2], [0.1, 0.9, 1.0, 0.3, NAN, 1.0],
                               [NAN, NAN, NAN, 0.7, 0.4, NAN]])
    return {"items": items, "completion": completion}


# -- fusion --

@pytest.mark.parametrize("mode", FUSION_MODES)
def test_each_fusion_mode_gives_hidden_sized_item_vectors_and_finite_loss(llama_dir: Path, mode: str) -> None:
    model = make_model(llama_dir, fusion=mode)
    batch = make_batch()
    vectors = model.item_vectors(batch["items"][:, :-1], batch["completion"][:, :-1])
    assert vectors.shape == (3, 5, 32)
    loss = model.loss(batch)
    assert torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize("mode", FUSION_MODES)
@pytest.mark.parametrize("subset", [("id",), ("lyrics",), ("id", "audio"), ("lyrics", "meta"),
                                    ("id", "lyrics", "meta")])
def test_fusion_accepts_any_subset_except_film_without_id_or_content(mode: str, subset: tuple[str, ...]) -> None:
    dims = {m: 3 + i for i, m in enumerate(subset)}
    parts = {m: torch.randn(2, 5, d) for m, d in dims.items()}
    present = {m: torch.rand(2, 5) > 0.5 for m in subset if m != "id"}
    if mode == "film" and ("id" not in subset or len(subset) < 2):
        with pytest.raises(ValueError, match="film"):
            build_fusion(mode, dims, 8, 12)
        return
    out = build_fusion(mode, dims, 8, 12)(parts, present)
    assert out.shape == (2, 5, 12)
    assert torch.isfinite(out).all()


def test_film_without_id_raises_value_error(llama_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"'film'.*'id'"):
        make_model(llama_dir, fusion="film", modalities=["lyrics", "audio", "completion"])


def test_absent_modality_gets_the_learned_missing_vector_not_its_raw_values(llama_dir: Path) -> None:
    model = make_model(llama_dir)
    item = int(torch.nonzero(~model.present_lyrics[1:])[0]) + 1  # an item without lyrics
    items, completion = torch.tensor([[item]]), torch.tensor([[0.5]])
    with torch.no_grad():
        before = model.item_vectors(items, completion)
        model.content_lyrics[item] = 100.0  # garbage in an absent row must be ignored
        assert torch.equal(model.item_vectors(items, completion), before)
        model.fusion.missing["lyrics"].add_(1.0)
        assert not torch.allclose(model.item_vectors(items, completion), before)


def test_unknown_completion_uses_the_learned_unknown_vector(llama_dir: Path) -> None:
    model = make_model(llama_dir)
    items = torch.tensor([[3, 3]])
    with torch.no_grad():
        vectors = model.item_vectors(items, torch.tensor([[NAN, 0.0]]))
        assert torch.isfinite(vectors).all()
        assert not torch.allclose(vectors[0, 0], vectors[0, 1])  # unknown is not "completion 0"
        model.completion_unknown.add_(1.0)
        moved = model.item_vectors(items, torch.tensor([[NAN, 0.0]]))
    assert not torch.allclose(moved[0, 0], vectors[0, 0])
    assert torch.equal(moved[0, 1], vectors[0, 1])


# -- what trains --

@pytest.mark.parametrize("head_weights", ["free", "tied", "hybrid"])
def test_lora_trains_only_adapters_fusion_projections_missing_vectors_and_head(llama_dir: Path,
                                                                               head_weights: str) -> None:
    # PEFT's architecture default (target_modules None): q_proj, v_proj for Llama
    model = make_model(llama_dir, head_weights=head_weights, lora={"target_modules": None})
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    allowed = ("lora_", "fusion.", "input_proj.", "completion_proj.", "completion_unknown", "head.",
               "output_proj.", "item_bias")
    assert trainable and all(any(tag in name for tag in allowed) for name in trainable), sorted(trainable)
    backbone_trainable = [name for name in trainable if name.startswith("backbone.")]
    assert backbone_trainable and all("lora_" in name for name in backbone_trainable)
    assert not any(p.requires_grad for n, p in model.backbone.named_parameters() if "lora_" not in n)
    assert not model.id_table.requires_grad and not model.content_lyrics.requires_grad

    # q_proj: 32 -> 32; v_proj: 32 -> 2 kv heads x 16 = 32. LoRA adds A [r, in] + B [out, r].
    r, hidden, layers = 4, 32, 2
    lora = layers * (r * (hidden + hidden) + r * (hidden + 32))
    fusion_dim, n_mods = 16, 4
    fusion = (sum(d * fusion_dim + fusion_dim for d in (ID_DIM, *CONTENT_DIMS.values()))  # per-modality Linear
              + 3 * fusion_dim  # missing vectors (content only)
              + n_mods * fusion_dim * fusion_dim + fusion_dim)  # concat -> Linear
    projections = (fusion_dim * hidden + hidden) + (hidden + hidden) + hidden  # input, completion, unknown
    # free: Linear(hidden, items + 1); tied: output_proj(fusion_dim -> hidden) + one bias per item;
    # hybrid: both, the free head's bias serving as the item bias.
    free, tied = hidden * (N_ITEMS + 1) + N_ITEMS + 1, fusion_dim * hidden + hidden
    head = {"free": free, "tied": tied + N_ITEMS + 1, "hybrid": free + tied}[head_weights]
    assert sum(p.numel() for p in backbone_trainable_params(model)) == lora
    assert sum(p.numel() for p in trainable.values()) == lora + fusion + projections + head


def backbone_trainable_params(model: E4SRec) -> list[torch.nn.Parameter]:
    return [p for p in model.backbone.parameters() if p.requires_grad]


def test_custom_target_modules_adapt_exactly_those_modules(llama_dir: Path) -> None:
    model = make_model(llama_dir, lora={"target_modules": ["k_proj", "o_proj"]})
    adapted = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name, _ in model.named_parameters() if "lora_" in name}
    assert adapted == {"k_proj", "o_proj"}
    assert torch.isfinite(model.loss(make_batch()))


def test_backbone_without_a_peft_default_asks_for_target_modules(llama_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    monkeypatch.delitem(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, "llama")
    with pytest.raises(ValueError, match=r"lora\.target_modules"):
        make_model(llama_dir, lora={"target_modules": None})


# -- decoder and encoder backbones, persistence --

@pytest.mark.parametrize("head_weights", ["free", "tied", "hybrid"])
def test_save_load_round_trip_gives_identical_scores(llama_dir: Path, tmp_path: Path, head_weights: str) -> None:
    model = make_model(llama_dir, fusion="xattn", head_weights=head_weights)
    with torch.no_grad():  # LoRA B starts at zero: make the adapter matter before saving it
        for name, p in model.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    model.eval()
    batch = make_batch()
    items, completion = batch["items"][:, :-1], batch["completion"][:, :-1]
    with torch.no_grad():
        scores = model.score(items, completion)
        model.save(tmp_path / "e4srec")
        loaded = E4SRec.load(tmp_path / "e4srec")
        again = loaded.score(items, completion)
    assert scores.shape == (3, N_ITEMS + 1)
    assert torch.isneginf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()
    assert torch.equal(scores, again)
    assert (tmp_path / "e4srec" / "adapter" / "adapter_config.json").exists()
    assert torch.equal(loaded.id_table, model.id_table)


def test_bert_backbone_uses_peft_default_targets_and_scores(bert_dir: Path) -> None:
    model = make_model(bert_dir, fusion="weighted", head="sampled", lora={"target_modules": None})
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_" in n} == {
        "query", "value"}
    assert int(model.instruction_ids[0]) == model.tokenizer.cls_token_id
    assert torch.isfinite(model.loss(make_batch()))
    batch = make_batch()
    assert model.score(batch["items"][:, :-1], batch["completion"][:, :-1]).shape == (3, N_ITEMS + 1)


def test_default_minilm_backbone_reads_item_vectors() -> None:
    from training.models.e4srec import default_backbone

    model = make_model(Path(default_backbone()), modalities=["id", "meta"])
    assert model.hidden == 384
    batch = make_batch()
    with torch.no_grad():
        assert torch.isfinite(model.score(batch["items"][:, :-1], batch["completion"][:, :-1])[:, 1:]).all()


@pytest.mark.parametrize("head_weights", ["free", "tied", "hybrid"])
def test_sampled_head_gives_finite_loss_even_with_accidental_hits(llama_dir: Path, head_weights: str) -> None:
    # 64 draws from 20 items: hits are certain
    model = make_model(llama_dir, head="sampled", sampled={"negatives": 64}, head_weights=head_weights)
    loss = model.loss(make_batch())
    assert torch.isfinite(loss)
    loss.backward()
    weights = ([model.head.weight] if head_weights != "tied" else []) + (
        [model.output_proj.weight] if head_weights != "free" else [])
    assert all(w.grad is not None for w in weights)


@pytest.mark.parametrize("head_weights", ["free", "tied", "hybrid"])
def test_full_head_loss_in_item_chunks_equals_the_dense_softmax(llama_dir: Path, head_weights: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import functools

    import torch.nn.functional as F

    from training.models import e4srec as e4srec_module
    from training.models.losses import chunked_cross_entropy

    model = make_model(llama_dir, head="full", head_weights=head_weights).eval()
    h, target = torch.randn(5, model.hidden), torch.tensor([1, 4, 7, 20, 2])
    with torch.no_grad():
        dense = F.cross_entropy(model._logits(h)[:, 1:], target - 1)
        # 3 items per chunk: the 20-item catalogue takes 7 chunks, the last one short.
        monkeypatch.setattr(e4srec_module, "chunked_cross_entropy", functools.partial(chunked_cross_entropy, chunk=3))
        chunked = model._full_loss(h, target)
    assert chunked.item() == pytest.approx(dense.item(), rel=1e-5)


def test_auto_head_is_full_on_small_catalogues(llama_dir: Path) -> None:
    assert make_model(llama_dir).head_kind == "full"  # 20 items, far under the 50,000 threshold


def test_hybrid_head_is_the_free_rows_plus_the_tied_rows(llama_dir: Path) -> None:
    # Full logits and (target, negatives) logits of the hybrid head are free + tied, exactly.
    model = make_model(llama_dir, head_weights="hybrid").eval()
    h = torch.randn(3, model.hidden)
    rows = model.output_proj(model._fused(torch.arange(N_ITEMS + 1)))  # [n+1, H]
    with torch.no_grad():
        expected = model.head(h) + h @ rows.T
        assert torch.allclose(model._logits(h), expected, atol=1e-5)
        target, negatives = torch.tensor([1, 4, 7]), torch.tensor([2, 3])
        picked = model._logits(h, target, negatives)
    assert torch.allclose(picked[:, 0], expected[torch.arange(3), target], atol=1e-5)
    assert torch.allclose(picked[:, 1:], expected[:, negatives], atol=1e-5)


def test_tied_head_scores_an_item_by_its_own_vectors(llama_dir: Path) -> None:
    # Two items with identical ID and content vectors (and equal bias) get identical scores; a
    # free head would give them unrelated rows.
    model = make_model(llama_dir, head_weights="tied").eval()
    with torch.no_grad():
        model.id_table[5] = model.id_table[6]
        for m in CONTENT_DIMS:
            getattr(model, f"content_{m}")[5] = getattr(model, f"content_{m}")[6]
            getattr(model, f"present_{m}")[5] = getattr(model, f"present_{m}")[6]
        batch = make_batch()
        scores = model.score(batch["items"][:, :-1], batch["completion"][:, :-1])
        assert torch.allclose(scores[:, 5], scores[:, 6])
        model.id_table[5] = -model.id_table[5]  # a shift would vanish in the input LayerNorm
        moved = model.score(batch["items"][:, :-1], batch["completion"][:, :-1])
    assert not torch.allclose(moved[:, 5], moved[:, 6])


def test_bf16_autocast_loss_is_finite(llama_dir: Path) -> None:
    model = make_model(llama_dir, fusion="film")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(make_batch())
    assert torch.isfinite(loss)
    loss.backward()


def test_a_few_optimizer_steps_reduce_the_loss(llama_dir: Path) -> None:
    model = make_model(llama_dir)
    batch = make_batch()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = model.loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_prompt_needs_exactly_one_history_placeholder(llama_dir: Path) -> None:
    assert DEFAULT_PROMPT.read_text().count("{history}") == 1
    settings = E4SRecSettings().model_dump(mode="json")
    with pytest.raises(ValueError, match="exactly one"):
        E4SRec(N_ITEMS, str(llama_dir), "no placeholder here", settings, ID_DIM, CONTENT_DIMS)


# -- content-only baseline --

def style_table() -> ContentTable:
    # Items 1-5 are "style A", 6-10 "style B" (lyrics and audio agree); 11 and 12 have no content at all.
    n = 12
    g = torch.Generator().manual_seed(1)
    a_lyr, b_lyr, a_aud, b_aud = (torch.randn(d, generator=g) for d in (4, 4, 3, 3))
    lyrics, audio = torch.zeros(n + 1, 4), torch.zeros(n + 1, 3)
    for i in range(1, 11):
        style_lyr, style_aud = (a_lyr, a_aud) if i <= 5 else (b_lyr, b_aud)
        lyrics[i] = style_lyr * (1 + i) + 0.1 * torch.randn(4, generator=g)  # norms differ: cosine ignores them
        audio[i] = style_aud + 0.1 * torch.randn(3, generator=g)
    present_lyrics = torch.zeros(n + 1, dtype=torch.bool)
    present_lyrics[1:11] = True
    present_lyrics[7] = False  # a style-B item with audio only
    lyrics[7] = 0.0
    present_audio = present_lyrics.clone()
    present_audio[7] = True
    return ContentTable(vectors={"lyrics": lyrics, "audio": audio}, present={"lyrics": present_lyrics,
                                                                              "audio": present_audio})


def content_baseline(decay: float = 0.9) -> ContentBaseline:
    model = ContentBaseline(12, {"lyrics": 4, "audio": 3}, decay=decay)
    model.set_item_tables(style_table())
    return model


def test_content_baseline_ranks_the_history_style_first_and_contentless_items_last() -> None:
    model = content_baseline()
    items = torch.tensor([[0, 0, 1, 2, 3], [0, 6, 8, 9, 10]])
    scores = model.score(items, torch.full(items.shape, NAN))
    assert scores.shape == (2, 13) and torch.isneginf(scores[:, 0]).all()
    style_a, style_b = [4, 5], [7]
    assert scores[0, style_a].min() > scores[0, 6:11].max()
    assert scores[1, style_b].min() > scores[1, 1:6].max()
    assert (scores[:, 11:] == NO_CONTENT).all()
    assert (scores[:, 1:11] <= 1 + 1e-5).all() and (scores[:, 1:11] >= -1 - 1e-5).all()


def test_content_baseline_ignores_a_direction_every_item_shares() -> None:
    # Real encoders put all items in a narrow cone. Give both blocks a large common offset and take
    # the audio of style-A items 4 and 5 away: raw cosine would then favour any item with audio
    # (style B) over 4 and 5; centred on the catalogue mean, style still decides.
    table = style_table()
    for m, offset in (("lyrics", [20.0, -15.0, 30.0, 10.0]), ("audio", [20.0, -15.0, 30.0])):
        table.vectors[m][table.present[m]] += torch.tensor(offset)
    table.present["audio"][[4, 5]] = False
    table.vectors["audio"][[4, 5]] = 0.0
    model = ContentBaseline(12, {"lyrics": 4, "audio": 3})
    model.set_item_tables(table)
    scores = model.score(torch.tensor([[0, 0, 1, 2, 3]]), torch.full((1, 5), NAN))
    assert scores[0, [4, 5]].min() > scores[0, 6:11].max()


def test_content_baseline_weights_recent_items_more() -> None:
    model = content_baseline(decay=0.5)
    # Two A items then two B items: the newest (B) dominate, so B outranks A.
    scores = model.score(torch.tensor([[1, 2, 8, 9]]), torch.full((1, 4), NAN))
    assert scores[0, 6:11].mean() > scores[0, 1:6].mean()


def test_content_baseline_has_no_training_and_survives_save_load(tmp_path: Path) -> None:
    model = content_baseline()
    with pytest.raises(RuntimeError, match="no training"):
        model.loss({"items": torch.tensor([[1, 2]]), "completion": torch.tensor([[NAN, NAN]])})
    model.save(tmp_path / "content")
    loaded = ContentBaseline.load(tmp_path / "content")
    items = torch.tensor([[0, 1, 6]])
    assert torch.equal(loaded.score(items, items.float()), model.score(items, items.float()))
    assert math.isclose(loaded.decay, 0.9)


@pytest.mark.parametrize("backbone", ["llama", "bert"])
def test_dense_readout_state_at_a_history_position_never_sees_later_items(backbone: str, llama_dir: Path,
                                                                          bert_dir: Path) -> None:
    # readout "every" trains each history position on its next item: position t must be blind to
    # items after t, for a decoder (causal by construction) and an encoder switched to causal.
    model = make_model(llama_dir if backbone == "llama" else bert_dir, readout="every").eval()
    items = torch.tensor([[0, 3, 4, 5, 6, 7, 8]])
    completion = torch.full(items.shape, NAN)
    changed = items.clone()
    changed[0, 5:] = torch.tensor([12, 13])
    P = model.instruction_ids.shape[0]
    with torch.no_grad():
        a = model._hidden(items, completion)
        b = model._hidden(changed, completion)
    assert torch.allclose(a[:, : P + 5], b[:, : P + 5], atol=1e-5)  # up to the last unchanged item
    assert not torch.allclose(a[:, P + 5], b[:, P + 5])


@pytest.mark.parametrize("readout", ["every", "last"])
def test_both_readouts_train_and_score_every_item(llama_dir: Path, readout: str) -> None:
    model = make_model(llama_dir, readout=readout)
    loss = model.loss(make_batch())
    assert torch.isfinite(loss)
    loss.backward()
    batch = make_batch()
    assert model.score(batch["items"][:, :-1], batch["completion"][:, :-1]).shape == (3, N_ITEMS + 1)


def test_default_lora_adapts_every_linear_layer_of_the_backbone(llama_dir: Path) -> None:
    model = make_model(llama_dir)  # lora.target_modules defaults to PEFT's "all-linear"
    adapted = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name, _ in model.named_parameters() if "lora_" in name}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("readout", ["every", "last"])
def test_trimming_all_padding_columns_keeps_the_loss_and_the_scores(llama_dir: Path, readout: str) -> None:
    # Grouped batches (e4srec.group_by_length) drop the columns that are padding in every row.
    from training.models.base import trim_padding

    model = make_model(llama_dir, readout=readout).eval()
    batch = make_batch()
    # Rows 0 and 2 (4 and 3 items) behind 4 more columns of padding: [2, 8] trims to [2, 4].
    wide = {k: torch.cat([torch.full((2, 4), 0 if k == "items" else NAN, dtype=v.dtype), v[[0, 2], 2:]], dim=1)
            for k, v in batch.items()}
    items, completion = trim_padding(wide["items"], wide["completion"])
    assert items.shape == (2, 4) and torch.equal(items, wide["items"][:, 4:])
    with torch.no_grad():
        assert torch.allclose(model.loss({"items": items, "completion": completion}), model.loss(wide), atol=1e-5)
        assert torch.allclose(model.score(items[:, :-1], completion[:, :-1]),
                              model.score(wide["items"][:, :-1], wide["completion"][:, :-1]), atol=1e-5)


@pytest.mark.parametrize(("backbone", "readout"), [("llama", "every"), ("llama", "last"), ("bert", "every")])
def test_the_shared_prompt_prefix_gives_the_states_and_gradients_of_one_whole_forward(
        backbone: str, readout: str, llama_dir: Path, bert_dir: Path) -> None:
    # A causal backbone runs the instruction once per batch and the history against its cached keys
    # and values: the same hidden states and LoRA gradients as one forward over the whole sequence.
    model = make_model(llama_dir if backbone == "llama" else bert_dir, readout=readout)
    assert model.shares_prefix
    batch = make_batch()
    results = []
    for shared in (False, True):
        model.shares_prefix = shared
        model.zero_grad()
        hidden = model._hidden(batch["items"], batch["completion"])
        model.loss(batch).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if "lora" in n and p.grad is not None}
        results.append((hidden.detach(), grads))
    (h0, g0), (h1, g1) = results
    assert h0.shape == h1.shape
    assert torch.allclose(h0, h1, atol=1e-5)
    assert g0.keys() == g1.keys() and g0
    assert all(torch.allclose(g0[n], g1[n], atol=1e-5, rtol=1e-4) for n in g0)


def test_a_bidirectional_encoder_reading_the_last_position_runs_the_whole_sequence(bert_dir: Path) -> None:
    # Without causal attention the instruction attends to the history: it cannot be shared.
    assert not make_model(bert_dir, readout="last").shares_prefix
