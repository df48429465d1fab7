// The JSON documents of the queue that both the CLI and the HTTP API print (docs/commands.md §7,
// §12, §16, §17; docs/http-api.md §3), built here once so that `acmo stats --json` and
// GET /sqs/stats, `acmo dlq list --json` and GET /sqs/dlq, `acmo groups --json` and
// GET /sqs/groups say the same things in the same names.
#pragma once

#include <vector>

#include <nlohmann/json.hpp>

#include "core/queue/queue.hpp"

namespace acmo {

// {"name", "visible", "inFlight", "delayed", "deadLettered", "dedupEntries", "sent",
//  "duplicates", "received", "deleted", "retried", "expired", "oldestAgeMs", "dlqName",
//  "deadLetteredTotal", "redriven", "purged"}
nlohmann::json queue_stats_json(const QueueStats& stats);

// One dead-lettered message: {"messageId", "sequenceNumber", "groupId", "deduplicationId",
// "reason", "lastError", "failures", "receiveCount", "sentAt", "deadLetteredAt", "body"}; the
// body as JSON when it is JSON (order events are), else as a string.
nlohmann::json dead_letter_json(const Message& message);

// A page of the DLQ: {"messages": [dead_letter_json...], "total": messages in the DLQ}.
nlohmann::json dead_letters_json(const Queue::DlqPage& page);

// "visible", "inFlight" (received, not yet deleted or released) or "delayed" (waiting out a
// retry delay) at `now_ms`.
const char* waiting_state(const Message& message, int64_t now_ms);

// Waiting messages as peek shows them: {"messages": [{"messageId", "sequenceNumber", "groupId",
// "deduplicationId", "state", "receiveCount", "failures", "lastError", "sentAt", "visibleAt",
// "body"}], "count"}; bodies as in dead_letter_json.
nlohmann::json waiting_messages_json(const std::vector<Message>& messages, int64_t now_ms);

// The message groups as acmo groups and GET /sqs/groups show them (docs/commands.md §17):
// {"groups": [{"groupId", "depth", "inFlight", "blocked" (null, "inFlight" or "retryDelay"),
// "headMessageId", "headSequenceNumber", "headFirstSentAt", "headAgeMs", "headVisibleAt"}],
// "count", "omitted" (groups that matched but were left out by the limit),
// "totals": {"groups", "messages", "inFlight", "blocked"}}.
nlohmann::json groups_json(const GroupsReport& report);

// "inFlight", "retryDelay", or nullptr for a group that is not blocked.
const char* group_block_name(GroupBlock block);

} // namespace acmo
