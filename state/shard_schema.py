"""The shard database schema, as versioned migrations.

Every shard database holds the same tables; `account_directory` is used on shard 0 only
(it exists everywhere so that one migration set serves every shard).

The ledger protects itself, whatever client writes to it:
- `ledger_transactions`, `ledger_entries` and `order_events` are append-only: UPDATE, DELETE
  and TRUNCATE are refused by triggers.
- Per asset, a transaction's entries sum to zero. Two triggers enforce it: a statement-level
  check on `ledger_entries` (set-based, so batched writes stay fast) refuses any statement that
  leaves a touched transaction unbalanced (including a leg added later to an old transaction),
  and a deferred constraint trigger on `ledger_transactions` refuses to commit a transaction
  header whose entries are missing (checked once per commit, set-based, over the headers that
  database transaction inserted). A transaction's legs therefore go in with one INSERT
  statement, in the same database transaction as its header.

  Since version 2 the statement check sums only the rows the statement inserts, per
  transaction and asset (a hash aggregate over the transition table, no index probe per
  transaction). That is the same guarantee: entries are append-only, so by induction every
  transaction balanced before the statement, and it balances after it exactly when the
  statement's own legs of it sum to zero; a late leg of an old transaction is refused unless
  it comes with legs that cancel it. For the same reason the commit check only looks for
  headers without entries; and it is queued once per database transaction rather than once
  per header (it always checked all of the transaction's headers in its first firing).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


_V1_TABLES = """
CREATE TABLE accounts (
    account_id  text PRIMARY KEY,
    user_id     text NOT NULL,
    shard       integer NOT NULL,
    status      text NOT NULL DEFAULT 'active',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX accounts_user_idx ON accounts (user_id);

-- account -> shard, read on shard 0 (the directory): which accounts a user has.
CREATE TABLE account_directory (
    account_id  text PRIMARY KEY,
    user_id     text NOT NULL,
    shard       integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_directory_user_idx ON account_directory (user_id, created_at);

CREATE TABLE ledger_transactions (
    txn_id            text PRIMARY KEY,
    -- the order in which transactions landed: the order positions were applied in
    ledger_seq        bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    account_id        text NOT NULL,
    kind              text NOT NULL,
    cause_id          text NOT NULL,
    order_id          text,
    occurred_at       timestamptz NOT NULL,
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    source_topic      text,
    source_partition  integer,
    source_offset     bigint
);
CREATE INDEX ledger_transactions_account_idx ON ledger_transactions (account_id, occurred_at);

-- No foreign key to ledger_transactions: the deferred balance trigger already requires the
-- header, and a per-row RI check would halve the batched insert rate.
CREATE TABLE ledger_entries (
    txn_id          text NOT NULL,
    leg             smallint NOT NULL,
    ledger_account  text NOT NULL,
    asset           text NOT NULL,
    amount          numeric NOT NULL,
    account_id      text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    PRIMARY KEY (txn_id, leg)
);
CREATE INDEX ledger_entries_account_idx ON ledger_entries (account_id, occurred_at);

-- Materialised in the same database transaction as the entries that move them.
CREATE TABLE account_balances (
    ledger_account  text NOT NULL,
    asset           text NOT NULL,
    balance         numeric NOT NULL,
    account_id      text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ledger_account, asset)
);
CREATE INDEX account_balances_account_idx ON account_balances (account_id);

-- Average-cost positions: quantity is every user share bucket of the symbol together.
CREATE TABLE positions (
    account_id  text NOT NULL,
    symbol      text NOT NULL,
    quantity    numeric NOT NULL,
    cost_basis  numeric NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, symbol)
);

-- Latest state per order (the highest seq seen).
CREATE TABLE orders (
    order_id            text PRIMARY KEY,
    account_id          text NOT NULL,
    symbol              text NOT NULL,
    side                text NOT NULL,
    order_type          text NOT NULL,
    time_in_force       text NOT NULL,
    quantity            numeric NOT NULL,
    limit_price         numeric,
    stop_price          numeric,
    state               text NOT NULL,
    filled_quantity     numeric NOT NULL,
    average_fill_price  numeric,
    held_amount         numeric,
    reason              text,
    idempotency_key     text NOT NULL,
    seq                 integer NOT NULL,
    last_event_id       text NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);
CREATE INDEX orders_account_idx ON orders (account_id, created_at DESC);

-- The audit trail: who (account, idempotency key, cause), what (type, state), when, why
-- (reason, detail), and where it came from (topic, partition, offset).
CREATE TABLE order_events (
    event_id          text PRIMARY KEY,
    account_id        text NOT NULL,
    event_type        text NOT NULL,
    order_id          text,
    seq               integer,
    state             text,
    previous_state    text,
    reason            text,
    detail            text,
    cause_id          text,
    idempotency_key   text,
    occurred_at       timestamptz NOT NULL,
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    payload           jsonb NOT NULL,
    source_topic      text,
    source_partition  integer,
    source_offset     bigint
);
CREATE INDEX order_events_account_idx ON order_events (account_id, occurred_at);
CREATE INDEX order_events_order_idx ON order_events (order_id, seq);

-- How far each input partition has landed in this shard (monitoring, read-your-writes).
CREATE TABLE sink_offsets (
    topic       text NOT NULL,
    partition   integer NOT NULL,
    offset_max  bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
"""

_V1_TRIGGERS = """
CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER ledger_transactions_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER order_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON order_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Set-based: one query per statement over the transactions it touched (LATERAL keeps the
-- plan on the primary key however large the table grows).
CREATE FUNCTION check_entries_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.txn_id, s.asset, s.total INTO bad
      FROM (SELECT DISTINCT txn_id FROM new_rows) n
      CROSS JOIN LATERAL (SELECT e.asset, sum(e.amount) AS total FROM ledger_entries e
                           WHERE e.txn_id = n.txn_id GROUP BY e.asset) s
     WHERE s.total <> 0
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % does not balance: % sums to %',
            bad.txn_id, bad.asset, bad.total USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_entries_balance
    AFTER INSERT ON ledger_entries REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION check_entries_balance();

-- Headers inserted by this database transaction have ledger_seq >= brokerage.ledger_seq_min
-- (a transaction-local setting); each insert re-arms the commit check.
CREATE FUNCTION note_new_transactions() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    seen bigint := nullif(current_setting('brokerage.ledger_seq_min', true), '')::bigint;
    lowest bigint;
BEGIN
    SELECT min(ledger_seq) INTO lowest FROM new_rows;
    IF lowest IS NOT NULL THEN
        PERFORM set_config('brokerage.ledger_seq_min', least(seen, lowest)::text, true);
        PERFORM set_config('brokerage.ledger_checked', '', true);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_transactions_noted
    AFTER INSERT ON ledger_transactions REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION note_new_transactions();

-- At commit: every header of this database transaction has entries and they balance per
-- asset. Constraint triggers fire per row; the first firing checks all of the transaction's
-- headers in one query and the others return at once.
CREATE FUNCTION check_transaction_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    IF current_setting('brokerage.ledger_checked', true) = 'yes' THEN
        RETURN NULL;
    END IF;
    SELECT t.txn_id, s.asset, s.total INTO bad
      FROM ledger_transactions t
      LEFT JOIN LATERAL (SELECT e.asset, sum(e.amount) AS total FROM ledger_entries e
                          WHERE e.txn_id = t.txn_id GROUP BY e.asset) s ON true
     WHERE t.ledger_seq >= coalesce(
               nullif(current_setting('brokerage.ledger_seq_min', true), '')::bigint,
               NEW.ledger_seq)
       AND (s.asset IS NULL OR s.total <> 0)
     LIMIT 1;
    IF FOUND AND bad.asset IS NULL THEN
        RAISE EXCEPTION 'ledger transaction % has no entries', bad.txn_id
            USING ERRCODE = 'check_violation';
    ELSIF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % does not balance: % sums to %',
            bad.txn_id, bad.asset, bad.total USING ERRCODE = 'check_violation';
    END IF;
    PERFORM set_config('brokerage.ledger_checked', 'yes', true);
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER ledger_transactions_balance
    AFTER INSERT ON ledger_transactions DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION check_transaction_balance();
"""

_V2_CHEAPER_CHECKS = """
CREATE OR REPLACE FUNCTION check_entries_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT txn_id, asset, sum(amount) AS total INTO bad
      FROM new_rows GROUP BY txn_id, asset HAVING sum(amount) <> 0
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % does not balance: % sums to %',
            bad.txn_id, bad.asset, bad.total USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

-- At commit: no header of this database transaction is without entries (they balance: see
-- check_entries_balance). One event is queued per check, by the first header inserted since
-- the last check (arm_transaction_check, the trigger's WHEN), and the check reads every
-- header from that one's ledger_seq on: identity values grow within a session. Both
-- settings are transaction-local and revert with a rolled-back savepoint, as the event does.
-- Disarming after the check keeps SET CONSTRAINTS ... IMMEDIATE correct (one check per
-- statement then).
CREATE OR REPLACE FUNCTION check_transaction_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad text;
BEGIN
    SELECT t.txn_id INTO bad
      FROM ledger_transactions t
     WHERE t.ledger_seq >= coalesce(
               nullif(current_setting('brokerage.ledger_seq_min', true), '')::bigint,
               NEW.ledger_seq)
       AND NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.txn_id = t.txn_id)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % has no entries', bad
            USING ERRCODE = 'check_violation';
    END IF;
    PERFORM set_config('brokerage.ledger_check_armed', '', true);
    RETURN NULL;
END $$;

CREATE FUNCTION arm_transaction_check(ledger_seq bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('brokerage.ledger_check_armed', true) = 'yes' THEN
        RETURN false;
    END IF;
    PERFORM set_config('brokerage.ledger_check_armed', 'yes', true);
    PERFORM set_config('brokerage.ledger_seq_min', ledger_seq::text, true);
    RETURN true;
END $$;

DROP TRIGGER ledger_transactions_balance ON ledger_transactions;
CREATE CONSTRAINT TRIGGER ledger_transactions_balance
    AFTER INSERT ON ledger_transactions DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (arm_transaction_check(NEW.ledger_seq))
    EXECUTE FUNCTION check_transaction_balance();

-- Its work is done by arm_transaction_check now (and without a transition table).
DROP TRIGGER ledger_transactions_noted ON ledger_transactions;
DROP FUNCTION note_new_transactions();
"""

# The materialised tables are updated in place on every batch (the same few thousand balance
# and position rows again and again). With full pages each update is a non-HOT update: a new
# tuple on another page and a new entry in every index. Leaving room on each page lets the
# update stay on its page without touching the indexes (a HOT update), which made the balance
# upsert about three times cheaper per batch. Existing pages keep their layout until they are
# rewritten; new and pruned ones use the room.
_V3_ROOM_FOR_UPDATES = """
ALTER TABLE account_balances SET (fillfactor = 50);
ALTER TABLE positions SET (fillfactor = 50);
ALTER TABLE orders SET (fillfactor = 70);
ALTER TABLE sink_offsets SET (fillfactor = 50);
"""

# Broker epochs (state/epoch.py): an offset means something only within the broker log that
# produced it. `sink_offsets` says which log its offset counts in, and `broker_epochs` lists every
# log the shard has landed records from. A shard that landed records before epochs were recorded
# holds records of a log nobody can name any more: the epoch '' stands for it, so that nothing
# compares them with the broker's current log.
_V4_BROKER_EPOCHS = """
ALTER TABLE sink_offsets ADD COLUMN epoch text NOT NULL DEFAULT '';
CREATE TABLE broker_epochs (
    epoch          text PRIMARY KEY,
    first_seen_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO broker_epochs (epoch, first_seen_at)
SELECT '', min(landed_at)
  FROM (SELECT min(recorded_at) AS landed_at FROM ledger_transactions
        UNION ALL SELECT min(recorded_at) FROM order_events) landed
HAVING min(landed_at) IS NOT NULL;
"""

# What the HTTP gateway acknowledged (201/202), kept until the shard shows the command's outcome
# (state.intake_journal): after a broker reset the journal is what re-publishes it. `payload`
# holds the exact bytes produced to orders.commands; `order_id` is set for a place_order (the
# order it creates). `claim` names the request that last wrote the row: only that request may
# take back a row the broker never took. `published_epoch` is the broker epoch of the last
# publication; `decided_at` is set once the outcome was seen (then pruned after a retention).
_V5_INTAKE_JOURNAL = """
CREATE TABLE intake_journal (
    account_id         text NOT NULL,
    idempotency_key    text NOT NULL,
    command_type       text NOT NULL,
    order_id           text,
    payload            bytea NOT NULL,
    submitted_at       timestamptz NOT NULL,
    journaled_at       timestamptz NOT NULL DEFAULT now(),
    claim              text NOT NULL,
    published_epoch    text,
    last_published_at  timestamptz,
    publish_count      integer NOT NULL DEFAULT 0,
    decided_at         timestamptz,
    PRIMARY KEY (account_id, idempotency_key)
);
CREATE INDEX intake_journal_undecided_idx ON intake_journal (journaled_at)
    WHERE decided_at IS NULL;
CREATE INDEX intake_journal_decided_idx ON intake_journal (decided_at)
    WHERE decided_at IS NOT NULL;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "ledger, orders, audit, balances, positions", _V1_TABLES + _V1_TRIGGERS),
    Migration(2, "balance checks over the inserted rows only", _V2_CHEAPER_CHECKS),
    Migration(3, "room on the pages of updated tables for HOT updates", _V3_ROOM_FOR_UPDATES),
    Migration(4, "broker epochs: which log each stored offset counts in", _V4_BROKER_EPOCHS),
    Migration(5, "intake journal of acknowledged commands", _V5_INTAKE_JOURNAL),
)

# One advisory lock key for migrations, so that concurrent `migrate` calls serialise.
MIGRATION_LOCK_KEY = 0x5E4D_0001

BOOKKEEPING_SQL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
