"""``encore nightly`` SIGKILLed inside each step, then rerun: the uninterrupted result, nothing lost.

Each step is killed at a point inside it where its output is half done (``KILL_POINTS``), the
process group killed from outside once the run announces it holds there. Then:

* what a reader sees before the rerun: every lake table partition (and every online-store table) is
  exactly the one before the step or the one after it, never half of one;
* the rerun (``nightly --until STEP``, resuming at that step) ends with the same lake and
  recommendations as the uninterrupted run (as sorted row sets, see tests/reliability/harness.py),
  the same online store, the same Feast and MLflow registries, and no staging, journal or trash.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from encore.nightly.pipeline import STEPS
from tests.reliability.conftest import Night
from tests.reliability.harness import data_groups, leftovers, online_rows, registries, run_and_kill_at

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

MODEL = "encore-recommender"
# Where each step is killed: after its output is staged or partly published, before it is done.
KILL_POINTS = {
    "ingest": "publish.mid_swap",  # some new partitions swapped in, the rest still staged
    "features": "features.staged",  # every new table partition written, none published
    "annotate": "annotate.staged",  # the LLM's answers collected and staged
    "embed": "embed.staged",  # new tracks' embeddings staged
    "materialize": "materialize.view_loaded",  # one view loaded online, the others not yet
    "score": "score.staged",  # every user ranked, the lists staged
    "report": "report.json_written",  # the JSON rewritten, the HTML not
}


def _state(night: Night) -> dict:
    path = night.home / "nightly" / f"state-{datetime.now(UTC).date()}.json"
    return json.loads(path.read_text()) if path.is_file() else {"steps": {}}


@pytest.mark.parametrize("step", STEPS)
def test_a_nightly_killed_inside_a_step_reruns_to_the_uninterrupted_result(night: Night, step: str) -> None:
    before, after = night.before(step), night.snaps[step]
    night.restore(before)
    run_and_kill_at(["--config", str(night.profile), "nightly", "--until", step], night.env, KILL_POINTS[step])

    # Readers between the kill and the rerun: each partition old or new, never partial.
    seen, old, new = data_groups(night.home), data_groups(before), data_groups(after)
    assert old != new or step in ("materialize", "report")  # the step had work to do
    for key in sorted(set(seen) | set(old) | set(new)):
        assert seen.get(key, []) in (old.get(key, []), new.get(key, [])), f"{key} is neither before nor after"
    on_seen, on_old, on_new = online_rows(night.home), online_rows(before), online_rows(after)
    for table in sorted(set(on_seen) | set(on_old) | set(on_new)):
        assert on_seen.get(table, []) in (on_old.get(table, []), on_new.get(table, [])), table
    assert _state(night)["steps"].get(step, {}).get("status") != "done"

    night.encore("nightly", "--until", step)

    assert _state(night)["steps"][step]["status"] in ("done", "skipped")
    assert data_groups(night.home) == new
    assert online_rows(night.home) == on_new
    assert registries(night.home, MODEL) == registries(after, MODEL)
    assert leftovers(night.home) == []
    if step == "report":
        day = datetime.now(UTC).date()
        got = json.loads((night.home / "reports" / f"nightly-{day}.json").read_text())
        want = json.loads((after / "reports" / f"nightly-{day}.json").read_text())
        assert got["lists"] == want["lists"] and got["champion"] == want["champion"]
        assert (night.home / "reports" / f"nightly-{day}.html").stat().st_mtime >= (
            night.home / "reports" / f"nightly-{day}.json").stat().st_mtime
