"""A consumer group member's identity that outlives the process, as Kafka Streams keeps its
process id in its state dir. Kept in a file beside the member's state dir (which a rebuild
may wipe), so a restarted member is the same member to the broker."""

from __future__ import annotations

import uuid
from pathlib import Path


def stable_member_id(state_dir: str, consumer_group: str) -> str:
    """`{consumer_group}-{id}`, the id drawn once and kept in `{state_dir}.member-id`. Used

    - as `group.instance.id` (static membership): a restarted member takes its own place in
      the group back. As a new dynamic member it met a coordinator (Tansu 0.6) still waiting
      for the dead incarnation, the group's leader, to send its SyncGroup: every join was
      answered "rebalance in progress", for good (issue 11: the account topology sat idle
      while its input grew, across restarts);
    - as `transactional.id`: Quix draws a new one per start, so a member that died inside a
      transaction left it open, and a broker that never times transactions out holds the
      last stable offset there for good. Under the same id the broker aborts it on start."""
    path = Path(state_dir).with_name(Path(state_dir).name + ".member-id")
    try:
        instance = path.read_text().strip()
    except FileNotFoundError:
        instance = ""
    if not instance:
        path.parent.mkdir(parents=True, exist_ok=True)
        instance = uuid.uuid4().hex
        scratch = path.with_name(path.name + ".tmp")
        scratch.write_text(instance + "\n")
        scratch.replace(path)
    return f"{consumer_group}-{instance}"
