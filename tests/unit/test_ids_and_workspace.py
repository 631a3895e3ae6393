from __future__ import annotations

from pathlib import Path

import pytest

from encore.core import ids
from encore.core.workspace import Workspace, WorkspaceBusy


def test_mbid_is_kept_and_empty_mbid_gets_a_stable_name_derived_id() -> None:
    assert ids.track_id("f7c1f8f8-b935-45ed-8fc8-7def69d92a10", "A", "T") == "f7c1f8f8-b935-45ed-8fc8-7def69d92a10"
    derived = ids.track_id("", "Sigur Rós", "Hoppípolla")
    assert derived == ids.track_id(None, "Sigur Rós", "Hoppípolla") == ids.derived_track_id("Sigur Rós", "Hoppípolla")
    assert derived.startswith("trk-") and len(derived) == 4 + ids.DERIVED_HEX
    # Exact names: a different artist with the same title is a different track.
    assert derived != ids.derived_track_id("Sigur Ros", "Hoppípolla")
    assert ids.derived_track_id("ab", "c") != ids.derived_track_id("a", "bc")  # the separator matters
    assert ids.artist_id("", "Björk").startswith("art-")


def test_workspace_lock_is_exclusive(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path)
    with ws.lock("lake"), pytest.raises(WorkspaceBusy, match="holds the 'lake' lock"), ws.lock("lake"):
        pass
    with ws.lock("lake"):  # released after use
        pass
