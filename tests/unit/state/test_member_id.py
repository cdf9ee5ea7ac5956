"""A member's id outlives its process and its state dir (state.member_id)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from state.member_id import MemberLock, peer_down, read_member_id, stable_member_id


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


def test_a_member_without_an_id_file_has_none_to_read(tmp_path: Path) -> None:
    state_dir = str(tmp_path / "state" / "accounts-1")
    assert read_member_id(state_dir, "accounts") is None
    made = stable_member_id(state_dir, "accounts")
    assert read_member_id(state_dir, "accounts") == made


def test_a_member_holding_its_lock_is_up_and_down_once_it_lets_go(tmp_path: Path) -> None:
    state_dir = str(tmp_path / "state" / "accounts-1")
    with peer_down(state_dir) as down:
        assert down  # never ran
    lock = MemberLock(state_dir)
    with peer_down(state_dir) as down:
        assert not down
    lock.release()
    with peer_down(state_dir) as down:
        assert down


def test_a_member_waits_while_a_sibling_cleans_up_after_it_and_not_forever(
        tmp_path: Path) -> None:
    state_dir = str(tmp_path / "state" / "accounts-1")
    with peer_down(state_dir) as down:
        assert down
        with pytest.raises(RuntimeError, match="running twice"):
            MemberLock(state_dir, wait_s=0.2)
    MemberLock(state_dir, wait_s=0.2).release()  # once the sibling is done, at once
