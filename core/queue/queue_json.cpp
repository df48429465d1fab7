#include "core/queue/queue_json.hpp"

#include "core/orders/order.hpp"
#include "core/util/ids.hpp"
#include "core/util/json_input.hpp"

namespace acmo {

nlohmann::json queue_stats_json(const QueueStats& s)
{
  return {{"name", s.name},
          {"visible", s.visible},
          {"inFlight", s.in_flight},
          {"delayed", s.delayed},
          {"deadLettered", s.dead_lettered},
          {"dedupEntries", s.dedup_entries},
          {"sent", s.sent},
          {"duplicates", s.duplicates},
          {"received", s.received},
          {"deleted", s.deleted},
          {"retried", s.retried},
          {"expired", s.expired},
          {"oldestAgeMs", s.oldest_age_ms},
          {"dlqName", s.dlq_name},
          {"deadLetteredTotal", s.dead_lettered_total},
          {"redriven", s.redriven},
          {"purged", s.purged}};
}

nlohmann::json dead_letter_json(const Message& m)
{
  // Bodies that broke the rules (nested too deep, say) are in the DLQ for that reason: they
  // are shown as strings, never parsed without bounds.
  auto parsed = parse_json_input(m.body, "the body");
  nlohmann::json body = parsed ? std::move(*parsed) : nlohmann::json(m.body);
  return {{"messageId", m.message_id},
          {"sequenceNumber", format_sequence(m.seq)},
          {"groupId", m.group_id},
          {"deduplicationId", m.dedup_id},
          {"reason", m.dead_reason},
          {"lastError", m.last_error},
          {"failures", m.failures},
          {"receiveCount", m.receive_count},
          {"sentAt", format_timestamp(m.sent_at_ms)},
          {"deadLetteredAt", format_timestamp(m.dead_at_ms)},
          {"body", std::move(body)}};
}

nlohmann::json dead_letters_json(const Queue::DlqPage& page)
{
  nlohmann::json list = nlohmann::json::array();
  for (const auto& m : page.messages) list.push_back(dead_letter_json(m));
  return {{"messages", std::move(list)}, {"total", page.total}};
}

} // namespace acmo
