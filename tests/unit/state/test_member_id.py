"""A member's id outlives its process and its state dir (state.member_id)."""

from __future__ import annotations

import shutil
from pathlib import Path

from state.member_id import stable_member_id


def test_a_restarted_member_gets_the_same_id(tmp_path: Path) -> None:
    state_dir = tmp_path / "state" / "accounts"
    first = stable_member_id(str(state_dir), "accounts")
    assert first.startswith("accounts-") and len(first) > len("accounts-") + 16
    assert stable_member_id(str(state_dir), "accounts") == first


def test_the_id_survives_a_wiped_state_dir(tmp_path: Path) -> None:
    state_dir = tmp_path / "state" / "accounts"
    state_dir.mkdir(parents=True)
    first = stable_member_id(str(state_dir), "accounts")
    shutil.rmtree(state_dir)
    assert stable_member_id(str(state_dir), "accounts") == first


def test_members_with_their_own_state_dirs_differ(tmp_path: Path) -> None:
    one = stable_member_id(str(tmp_path / "a" / "accounts"), "accounts")
    other = stable_member_id(str(tmp_path / "b" / "accounts"), "accounts")
    assert one != other
