"""The annotation contract without a model: answer parsing, prompt rendering, cache-key versions, config errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from encore.core.config import AnnotateConfig, ConfigError, EncoreConfig
from encore.core.schemas import GENE_GROUPS, GENE_SCALE, GENES
from jobs.annotate import (
    MAX_LYRICS_CHARS,
    NO_LYRICS,
    PACKAGED_PROMPT,
    InvalidAnswer,
    load_template,
    make_backend,
    model_id,
    parse_answer,
    prompt_version,
    render_prompt,
)

SCORES = {g: i % (GENE_SCALE + 1) for i, g in enumerate(GENES)}  # every value 0..5 occurs


def answer(**changes: object) -> str:
    obj: dict[str, object] = {**SCORES, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not ...})


def reason_of(text: str) -> str:
    with pytest.raises(InvalidAnswer) as err:
        parse_answer(text)
    return err.value.reason


def test_parse_answer_finds_the_object_inside_prose() -> None:
    text = f"Sure! Here are the genes for this song:\n{answer()}\nLet me know if you need more."
    assert parse_answer(text) == [SCORES[g] / GENE_SCALE for g in GENES]


def test_parse_answer_finds_the_object_inside_a_json_code_fence() -> None:
    text = f"```json\n{json.dumps(SCORES, indent=2)}\n```"
    assert parse_answer(text) == [SCORES[g] / GENE_SCALE for g in GENES]


def test_parse_answer_skips_braces_that_are_not_json() -> None:
    assert len(parse_answer(f"Scores {{see below}}: {answer()}")) == len(GENES)


def test_parse_answer_returns_genes_order_normalised_whatever_the_key_order() -> None:
    shuffled = dict(reversed(list(SCORES.items())))
    values = parse_answer(json.dumps(shuffled))
    assert values == [SCORES[g] / GENE_SCALE for g in GENES]
    assert min(values) == 0.0 and max(values) == 1.0
    assert values[GENES.index("vocal_timbre_thin_to_full")] == pytest.approx(0.2)


def test_parse_answer_rejects_a_missing_gene_and_names_it() -> None:
    with pytest.raises(InvalidAnswer) as err:
        parse_answer(answer(tempo=...))
    assert err.value.reason == "missing_genes"
    assert "tempo" in err.value.detail


def test_parse_answer_rejects_an_unknown_gene_and_names_it() -> None:
    with pytest.raises(InvalidAnswer) as err:
        parse_answer(answer(cowbell=3))
    assert err.value.reason == "unknown_genes"
    assert "cowbell" in err.value.detail


@pytest.mark.parametrize("value", [6, -1, 2.5, "3", True, None, float("nan")])
def test_parse_answer_rejects_a_value_that_is_not_an_integer_0_to_5(value: object) -> None:
    with pytest.raises(InvalidAnswer) as err:
        parse_answer(answer(swing=value))  # NaN is written as the bare NaN that json.loads accepts
    assert err.value.reason == "bad_value"
    assert "swing" in err.value.detail


def test_parse_answer_accepts_an_integer_valued_float() -> None:
    assert parse_answer(answer(swing=3.0))[GENES.index("swing")] == pytest.approx(3 / GENE_SCALE)


@pytest.mark.parametrize("text", ["", "I cannot rate this song.", "[1, 2, 3]", '{"tempo": 3', "{not json}"])
def test_parse_answer_without_a_json_object_is_no_json(text: str) -> None:
    assert reason_of(text) == "no_json"


def test_parse_answer_takes_the_first_object_in_the_text() -> None:
    # A complete answer after an incomplete one is not looked at: the first object decides.
    assert reason_of(f'{{"tempo": 3}} {answer()}') == "missing_genes"


# --------------------------------------------------------------------------- prompt
def test_packaged_prompt_explains_every_gene_under_every_group() -> None:
    text = PACKAGED_PROMPT.read_text(encoding="utf-8")
    for group in GENE_GROUPS:
        assert re.search(rf"^{group}\b", text, re.M), group
    for gene in GENES:
        assert gene in text, gene


def test_render_prompt_fills_the_track_and_keeps_the_few_shot_answers_valid() -> None:
    template = load_template(AnnotateConfig())
    text = render_prompt(template, "Ada & the $Dollars", "Song {1}", "first line\nsecond line")
    assert "Artist: Ada & the $Dollars\nTitle: Song {1}\nLyrics:\nfirst line\nsecond line\nAnswer:" in text
    assert "$artist" not in text and "$title" not in text and "$lyrics" not in text
    examples = re.findall(r"Answer:\n(\{.*?\n\})", text, re.S)
    assert len(examples) == 2
    for example in examples:
        assert len(parse_answer(example)) == len(GENES)  # each few-shot answer is itself a valid answer


def test_render_prompt_says_when_there_are_no_lyrics_and_cuts_long_ones() -> None:
    template = "$artist|$title|$lyrics"
    assert render_prompt(template, "A", "T", None) == f"A|T|{NO_LYRICS}"
    assert render_prompt(template, "A", "T", "   \n") == f"A|T|{NO_LYRICS}"
    long = render_prompt(template, "A", "T", "la " * 5000)
    assert len(long) < MAX_LYRICS_CHARS + 20 and long.endswith("[...]")


def write_template(path: Path, text: str) -> EncoreConfig:
    path.write_text(text, encoding="utf-8")
    return EncoreConfig(annotate=AnnotateConfig(prompt=path))


def test_prompt_version_is_the_stem_and_a_hash_of_the_text(tmp_path: Path) -> None:
    a = prompt_version(write_template(tmp_path / "mine_v2.txt", "Rate $artist - $title\n$lyrics\n"))
    assert re.fullmatch(r"mine_v2-[0-9a-f]{8}", a)
    assert prompt_version(write_template(tmp_path / "mine_v2.txt", "Rate $artist - $title\n$lyrics\n")) == a
    b = prompt_version(write_template(tmp_path / "mine_v2.txt", "Rate $artist: $title\n$lyrics\n"))
    assert b != a and b.startswith("mine_v2-")
    assert prompt_version(EncoreConfig()).startswith("mgphot_v1-")


def test_a_template_without_a_placeholder_is_a_config_error(tmp_path: Path) -> None:
    cfg = write_template(tmp_path / "p.txt", "Rate $artist - $title")
    with pytest.raises(ConfigError, match=r"annotate\.prompt.*\$lyrics"):
        prompt_version(cfg)


def test_a_missing_template_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"annotate\.prompt"):
        load_template(AnnotateConfig(prompt=tmp_path / "nope.txt"))


# --------------------------------------------------------------------------- model and backend config
def test_model_id_is_the_configured_name_else_the_local_folder_name(tmp_path: Path) -> None:
    folder = tmp_path / "qwen2.5-7b-instruct"
    assert model_id(EncoreConfig(annotate=AnnotateConfig(backend="local", model_path=folder))) == "qwen2.5-7b-instruct"
    named = AnnotateConfig(backend="local", model_path=folder, model="qwen-7b")
    assert model_id(EncoreConfig(annotate=named)) == "qwen-7b"
    with pytest.raises(ConfigError, match=r"annotate\.model"):
        model_id(EncoreConfig(annotate=AnnotateConfig(backend="http", url="http://127.0.0.1:1/v1")))


def test_make_backend_without_a_backend_names_the_keys_to_set() -> None:
    with pytest.raises(ConfigError, match=r"annotate\.backend.*annotate\.model_path.*annotate\.url"):
        make_backend(AnnotateConfig())


def test_make_backend_names_the_missing_url_or_model_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"annotate\.url"):
        make_backend(AnnotateConfig(backend="http", model="m"))
    with pytest.raises(ConfigError, match=r"annotate\.model_path"):
        make_backend(AnnotateConfig(backend="local"))
    with pytest.raises(ConfigError, match=r"annotate\.model_path"):
        make_backend(AnnotateConfig(backend="local", model_path=tmp_path / "absent"))
