#include "core/schema.hpp"

namespace acmo::schema {

const std::vector<std::string>& migrations()
{
  static const std::vector<std::string> k_migrations = {
    // 1: the queue engine.
    R"SQL(
CREATE TABLE queues (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  created_at INTEGER NOT NULL,
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
CREATE TABLE meta (
  key TEXT PRIMARY KEY,
  value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta(key, value) VALUES ('next_seq', 1);
-- seq is the sequence number: global, increasing, never reused (meta.next_seq).
CREATE TABLE messages (
  seq INTEGER PRIMARY KEY,
  queue_id INTEGER NOT NULL,
  group_id TEXT NOT NULL,
  message_id TEXT NOT NULL,
  dedup_id TEXT NOT NULL,
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
CREATE INDEX groups_by_ready ON groups(queue_id, ready_at);
-- The dedup history; rowid order is expiry order, which makes the sweep cheap.
CREATE TABLE dedup (
  queue_id INTEGER NOT NULL,
  dedup_id TEXT NOT NULL,
  message_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  UNIQUE (queue_id, dedup_id)
);
)SQL",
  };
  return k_migrations;
}

} // namespace acmo::schema
