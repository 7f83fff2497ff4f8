-- indexer schema, version 1.  Applied as a whole to a new database; older databases are upgraded by
-- the steps in indexer/migrations.py.  One database holds one chain (checked at open through `meta`),
-- yet every row carries its chain so exports and merged copies stay unambiguous.
--
-- Conventions
--   * Amounts are uint256 and never fit SQLite INTEGER: they are exact decimal TEXT.  Balance columns
--     (`balance`) are zero-padded to 78 digits so that a plain ORDER BY sorts them numerically; the view
--     `holder_balances` shows them without the padding.  Signed deltas are plain decimal TEXT.
--   * `pos` = block_number << 24 | position-in-block << 4 | sub (position: EVM log index, Solana event
--     ordinal; sub: several events from one log): it orders everything in chain order, and a rollback
--     above block A is a primary-key range delete.
--   * EVM addresses are stored lower-case (exports print EIP-55); Solana addresses as base58.

PRAGMA user_version = 1;

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- The cursor: the last block whose effects are wholly committed (written in the same transaction).
CREATE TABLE IF NOT EXISTS cursor (
    chain           TEXT PRIMARY KEY,
    block_number    INTEGER NOT NULL,
    block_hash      TEXT NOT NULL,
    block_timestamp INTEGER NOT NULL,
    first_block     INTEGER NOT NULL,   -- first block of the indexed range
    updated_at      REAL NOT NULL       -- unix time of the commit
) STRICT;

-- Indexed blocks with their hashes, for reorg detection (walk back to the common ancestor) and
-- timestamps.  Every block indexed one by one near the head is here; deep history backfilled by range
-- keeps the blocks that had events and each range's last block.
CREATE TABLE IF NOT EXISTS blocks (
    chain       TEXT NOT NULL,
    number      INTEGER NOT NULL,
    hash        TEXT NOT NULL,
    parent_hash TEXT NOT NULL,
    timestamp   INTEGER NOT NULL,
    event_count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (chain, number)
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS events (
    pos              INTEGER PRIMARY KEY,
    chain            TEXT NOT NULL,
    token            TEXT NOT NULL,
    block_number     INTEGER NOT NULL,
    block_hash       TEXT NOT NULL,
    transaction_hash TEXT NOT NULL,
    log_index        INTEGER NOT NULL,
    event_type       TEXT NOT NULL,
    from_address     TEXT,
    to_address       TEXT,
    amount           TEXT,
    data             TEXT NOT NULL DEFAULT '{}',   -- JSON
    timestamp        INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS events_by_token ON events (token, event_type);
CREATE INDEX IF NOT EXISTS events_by_tx ON events (transaction_hash);

-- Append-only balance ledger: one row per balance change.  id = pos << 1 | side (0 debit, 1 credit).
CREATE TABLE IF NOT EXISTS balance_ledger (
    id           INTEGER PRIMARY KEY,
    chain        TEXT NOT NULL,
    token        TEXT NOT NULL,
    holder       TEXT NOT NULL,
    block_number INTEGER NOT NULL,
    log_index    INTEGER NOT NULL,
    delta        TEXT NOT NULL,    -- signed decimal
    balance      TEXT NOT NULL     -- balance after this change, 78-digit zero-padded
) STRICT;
-- (token, holder, id): "balance of holder at block N" is one index seek (rowid is the last key column)
CREATE INDEX IF NOT EXISTS ledger_by_holder ON balance_ledger (token, holder);

-- Current balances, materialised in the same transaction as the ledger.
CREATE TABLE IF NOT EXISTS balances (
    chain                  TEXT NOT NULL,
    token                  TEXT NOT NULL,
    address                TEXT NOT NULL,
    balance                TEXT NOT NULL,   -- 78-digit zero-padded
    last_updated_block     INTEGER NOT NULL,
    last_updated_timestamp INTEGER NOT NULL,
    PRIMARY KEY (chain, token, address)
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS corporate_actions (
    id               INTEGER PRIMARY KEY,
    chain            TEXT NOT NULL,
    token            TEXT NOT NULL,
    action_type      TEXT NOT NULL,   -- issuance, redemption, name_change, symbol_change, split, pause, ...
    block_number     INTEGER NOT NULL,
    block_hash       TEXT NOT NULL,
    transaction_hash TEXT NOT NULL,
    log_index        INTEGER NOT NULL,
    old_value        TEXT,
    new_value        TEXT,
    data             TEXT NOT NULL DEFAULT '{}',
    timestamp        INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS corporate_actions_by_block ON corporate_actions (block_number);
CREATE INDEX IF NOT EXISTS corporate_actions_by_token ON corporate_actions (token, block_number);

-- Token state now, and its history: one snapshot per (token, block) in which it changed.
-- The multiplier in force at time t is multiplier_next when t >= multiplier_effective_at, else
-- multiplier (ERC-8056 and Token-2022 ScaledUiAmount both schedule a multiplier this way).
CREATE TABLE IF NOT EXISTS token_state (
    chain                   TEXT NOT NULL,
    token                   TEXT NOT NULL,
    name                    TEXT,
    symbol                  TEXT,
    decimals                INTEGER,
    multiplier              TEXT NOT NULL DEFAULT '1',
    multiplier_next         TEXT,
    multiplier_effective_at INTEGER,
    paused                  INTEGER NOT NULL DEFAULT 0,
    total_supply            TEXT NOT NULL DEFAULT '0',
    identity_registry       TEXT,
    compliance              TEXT,
    metadata                TEXT,             -- JSON: uri, custom metadata keys, permanent delegate...
    last_updated_block      INTEGER NOT NULL,
    PRIMARY KEY (chain, token)
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS token_state_history (
    chain                   TEXT NOT NULL,
    token                   TEXT NOT NULL,
    block_number            INTEGER NOT NULL,
    name                    TEXT,
    symbol                  TEXT,
    decimals                INTEGER,
    multiplier              TEXT NOT NULL,
    multiplier_next         TEXT,
    multiplier_effective_at INTEGER,
    paused                  INTEGER NOT NULL,
    total_supply            TEXT NOT NULL,
    identity_registry       TEXT,
    compliance              TEXT,
    metadata                TEXT,
    PRIMARY KEY (chain, token, block_number)
) STRICT, WITHOUT ROWID;

-- Compliance state of a holder now (frozen wallet, partially frozen amount, registered/allowlisted,
-- country, identity), and its history per (holder, block) in which it changed.
CREATE TABLE IF NOT EXISTS holder_state (
    chain              TEXT NOT NULL,
    token              TEXT NOT NULL,
    address            TEXT NOT NULL,
    frozen             INTEGER NOT NULL DEFAULT 0,
    frozen_amount      TEXT NOT NULL DEFAULT '0',
    registered         INTEGER,          -- NULL: no registry event seen
    country            INTEGER,
    identity           TEXT,
    last_updated_block INTEGER NOT NULL,
    PRIMARY KEY (chain, token, address)
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS holder_state_history (
    chain         TEXT NOT NULL,
    token         TEXT NOT NULL,
    address       TEXT NOT NULL,
    block_number  INTEGER NOT NULL,
    frozen        INTEGER NOT NULL,
    frozen_amount TEXT NOT NULL,
    registered    INTEGER,
    country       INTEGER,
    identity      TEXT,
    PRIMARY KEY (chain, token, address, block_number)
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS holder_state_history_by_block ON holder_state_history (block_number);

-- Contracts watched besides the configured tokens (e.g. an identity registry a token bound), from a block on.
CREATE TABLE IF NOT EXISTS watched_contracts (
    chain      TEXT NOT NULL,
    address    TEXT NOT NULL,
    token      TEXT NOT NULL,
    role       TEXT NOT NULL,
    from_block INTEGER NOT NULL,
    PRIMARY KEY (chain, address, token)
) STRICT, WITHOUT ROWID;

-- Logs that could not be decoded (counted skips), kept for audit.
CREATE TABLE IF NOT EXISTS skipped_logs (
    chain            TEXT NOT NULL,
    block_number     INTEGER NOT NULL,
    block_hash       TEXT NOT NULL,
    transaction_hash TEXT NOT NULL,
    log_index        INTEGER NOT NULL,
    address          TEXT NOT NULL,
    reason           TEXT NOT NULL,
    raw              TEXT NOT NULL,
    PRIMARY KEY (chain, block_number, log_index)
) STRICT, WITHOUT ROWID;

CREATE VIEW IF NOT EXISTS holder_balances AS
SELECT chain, token, address,
       CASE WHEN ltrim(balance, '0') = '' THEN '0' ELSE ltrim(balance, '0') END AS balance,
       last_updated_block, last_updated_timestamp
FROM balances;
