"""A consumer group member's identity that outlives the process, as Kafka Streams keeps its
process id in its state dir. Kept in a file beside the member's state dir (which a rebuild
may wipe), so a restarted member is the same member to the broker.

Beside it, a lock file that a running member holds for its whole life (`MemberLock`): the
kernel lets go of it when the process dies, however it dies, so a sibling process on the same
data dir can tell a dead member from a live one (`peer_down`) and clean up after it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

LOCK_WAIT_S = 30.0


def _id_path(state_dir: str) -> Path:
    return Path(state_dir).with_name(Path(state_dir).name + ".member-id")


def _lock_path(state_dir: str) -> Path:
    return Path(state_dir).with_name(Path(state_dir).name + ".member-lock")


def stable_member_id(state_dir: str, consumer_group: str) -> str:
    """`{consumer_group}-{id}`, the id drawn once and kept in `{state_dir}.member-id`. Used

    - as `group.instance.id` (static membership) by a group's only member: a restarted member
      takes its own place in the group back. As a new dynamic member it met a coordinator
      (Tansu 0.6) still waiting for the dead incarnation, the group's leader, to send its
      SyncGroup: every join was answered "rebalance in progress", for good (issue 11: the
      account topology sat idle while its input grew, across restarts). Not by the members
      of a group of several processes: Tansu 0.6 expires a member only on a request from a
      dynamic member, so a dead static member is never expelled and its partitions never
      move to the survivors (issue 12; compose/services.py);
    - as `transactional.id`: Quix draws a new one per start, so a member that died inside a
      transaction left it open, and a broker that never times transactions out holds the
      last stable offset there for good. Under the same id the broker aborts it on start."""
    member = read_member_id(state_dir, consumer_group)
    if member is None:
        path = _id_path(state_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        instance = uuid.uuid4().hex
        scratch = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        scratch.write_text(instance + "\n")
        scratch.replace(path)
        member = f"{consumer_group}-{instance}"
    return member


def read_member_id(state_dir: str, consumer_group: str) -> str | None:
    """The member id kept beside `state_dir`, or None when that member never had one (it
    never ran: it has nothing to clean up after)."""
    try:
        instance = _id_path(state_dir).read_text().strip()
    except FileNotFoundError:
        return None
    return f"{consumer_group}-{instance}" if instance else None


class MemberLock:
    """The lock a running member holds on `{state_dir}.member-lock` until it exits. Taken with
    a bounded wait: a sibling holds it only for the moment it cleans up after this member's
    previous incarnation (`peer_down`); a live process still holding it after LOCK_WAIT_S is
    another copy of this member, and running twice under one id would fence each other."""

    def __init__(self, state_dir: str, wait_s: float = LOCK_WAIT_S) -> None:
        path = _lock_path(state_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self._fd)
                    raise RuntimeError(f"member lock {path} is held by another process after "
                                       f"{wait_s:.0f} s: is this member running twice?") from None
                time.sleep(0.05)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor lets go of the lock
            self._fd = -1


@contextlib.contextmanager
def peer_down(state_dir: str) -> Iterator[bool]:
    """Whether the member of `state_dir` is down (no live process holds its lock). While the
    block runs, a down member stays down: its lock is held here, so a restarting incarnation
    waits (MemberLock) until the cleanup after the dead one is done."""
    path = _lock_path(state_dir)
    # Created when missing, so that a member starting meanwhile waits for this block too.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
