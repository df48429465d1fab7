#include "core/queue/sqlite/schema.hpp"

namespace acmo::schema {

const std::vector<std::string>& migrations()
{
  static const std::vector<std::string> k_migrations = {
    // 1: the queue engine.
    R"SQL(
-- Row 0 (name '') holds the database-wide state: next_seq, the next sequence number (global,
-- increasing, never reused), and dedup_epoch, bumped by every purge so that processes drop
-- their in-memory dedup index. Sharing the counters' page keeps a commit's writes small.
CREATE TABLE queues (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  created_at INTEGER NOT NULL,
  next_seq INTEGER NOT NULL DEFAULT 1,
  dedup_epoch INTEGER NOT NULL DEFAULT 0,
  sent INTEGER NOT NULL DEFAULT 0,
  duplicates INTEGER NOT NULL DEFAULT 0,
  received INTEGER NOT NULL DEFAULT 0,
  deleted INTEGER NOT NULL DEFAULT 0,
  retried INTEGER NOT NULL DEFAULT 0,
  expired INTEGER NOT NULL DEFAULT 0,
  dead_lettered INTEGER NOT NULL DEFAULT 0,
  redriven INTEGER NOT NULL DEFAULT 0,
  purged INTEGER NOT NULL DEFAULT 0
);
INSERT INTO queues(id, name, created_at) VALUES (0, '', 0);
-- seq is the sequence number. message_id holds the UUID's 16 bytes; dedup_id is NULL when it
-- is content-based (the SHA-256 of the body, recomputed when shown).
CREATE TABLE messages (
  seq INTEGER PRIMARY KEY,
  queue_id INTEGER NOT NULL,
  group_id TEXT NOT NULL,
  message_id BLOB NOT NULL,
  dedup_id TEXT,
  body TEXT NOT NULL,
  sent_at INTEGER NOT NULL,
  visible_at INTEGER NOT NULL,
  receipt_token INTEGER NOT NULL DEFAULT 0,
  receive_count INTEGER NOT NULL DEFAULT 0,
  first_received_at INTEGER NOT NULL DEFAULT 0,
  failures INTEGER NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT '',
  dead_reason TEXT NOT NULL DEFAULT '',
  dead_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX messages_by_group ON messages(queue_id, group_id, seq);
-- One row per non-empty group: its head (lowest seq) and when that head is visible.
CREATE TABLE groups (
  queue_id INTEGER NOT NULL,
  group_id TEXT NOT NULL,
  head_seq INTEGER NOT NULL,
  ready_at INTEGER NOT NULL,
  PRIMARY KEY (queue_id, group_id)
) WITHOUT ROWID;
CREATE INDEX groups_by_head ON groups(queue_id, head_seq);
-- The dedup history, an append-only log: key is the first 16 bytes of SHA-256(dedup id).
-- Each process indexes it in memory (catching up by rowid), so that accepting a message
-- appends here instead of writing into a randomly ordered index. Rowid order is expiry order.
CREATE TABLE dedup (
  id INTEGER PRIMARY KEY, -- the message's seq: never reused, so processes catch up by id
  queue_id INTEGER NOT NULL,
  key BLOB NOT NULL,
  message_id BLOB NOT NULL,
  expires_at INTEGER NOT NULL
);
)SQL",
    // 2: the embedded order store. Items are kept as JSON with money in integer cents.
    R"SQL(
CREATE TABLE orders (
  id TEXT PRIMARY KEY,
  customer_name TEXT NOT NULL,
  customer_email TEXT NOT NULL,
  items TEXT NOT NULL,
  total_cents INTEGER NOT NULL,
  status TEXT NOT NULL,
  version INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX orders_by_created ON orders(created_at);
CREATE INDEX orders_by_status ON orders(status, created_at);
-- The audit trail: every applied event, in the order applied; it outlives a DELETE.
CREATE TABLE order_events (
  id INTEGER PRIMARY KEY,
  order_id TEXT NOT NULL,
  message_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  type TEXT NOT NULL,
  data TEXT NOT NULL,
  applied_at INTEGER NOT NULL
);
CREATE INDEX order_events_by_order ON order_events(order_id, id);
)SQL",
    // 3: the handler registry: every running OrderHandler, its heartbeat and its figures.
    R"SQL(
CREATE TABLE handlers (
  id TEXT PRIMARY KEY,
  pid INTEGER NOT NULL,
  host TEXT NOT NULL,
  started_at INTEGER NOT NULL,
  heartbeat_at INTEGER NOT NULL,
  stopped_at INTEGER NOT NULL DEFAULT 0,
  processed INTEGER NOT NULL DEFAULT 0,
  dead_lettered INTEGER NOT NULL DEFAULT 0,
  retried INTEGER NOT NULL DEFAULT 0,
  batches INTEGER NOT NULL DEFAULT 0,
  latency_p50_us INTEGER NOT NULL DEFAULT 0,
  latency_p99_us INTEGER NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
)SQL",
    // 4: each dedup entry remembers a fingerprint of its message's body (the first 8 bytes of
    // its SHA-256 as a number; 0 for entries made before), so that a send that must carry the
    // same body as the first with its id (an HTTP Idempotency-Key) can tell a retry from
    // another request.
    R"SQL(
ALTER TABLE dedup ADD COLUMN body_hash INTEGER NOT NULL DEFAULT 0;
)SQL",
    // 5: when a message was first sent, kept through a redrive (which sends it again: a new
    // sequence number and sent_at); NULL until then, meaning sent_at. The audit trail keeps
    // when each applied event was accepted beside when it was applied.
    R"SQL(
ALTER TABLE messages ADD COLUMN first_sent_at INTEGER;
ALTER TABLE order_events ADD COLUMN accepted_at INTEGER NOT NULL DEFAULT 0;
)SQL",
    // 6: what an operator asked of a running handler (acmo handlers stop | drain): '' nothing,
    // 'stop' or 'drain'. The handler reads it with each heartbeat.
    R"SQL(
ALTER TABLE handlers ADD COLUMN request TEXT NOT NULL DEFAULT '';
)SQL",
    // 7: where `acmo queue move` moved the queue (a PostgreSQL URL without its password, and
    // the schema), in the row of queue 0; '' while it has not been moved. Every send reads it
    // with the dedup epoch, and a moved queue takes no more messages.
    R"SQL(
ALTER TABLE queues ADD COLUMN moved_to TEXT NOT NULL DEFAULT '';
)SQL",
    // 8: the DLQ's messages by when they were dead-lettered, for `acmo tail` and --newer-than,
    // which read the whole DLQ without it. Partial: a message in its queue (dead_at 0) has no
    // entry, so sends and receives write no more than before.
    R"SQL(
CREATE INDEX messages_dead_by_time ON messages(queue_id, dead_at) WHERE dead_at > 0;
)SQL",
  };
  return k_migrations;
}

} // namespace acmo::schema
