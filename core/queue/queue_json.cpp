#include "core/queue/queue_json.hpp"

#include <algorithm>

#include "core/orders/order.hpp"
#include "core/util/ids.hpp"
#include "core/util/json_input.hpp"

namespace acmo {

namespace {

// Bodies that broke the rules (nested too deep, say) are shown as strings, never parsed
// without bounds.
nlohmann::json body_json(const std::string& body)
{
  auto parsed = parse_json_input(body, "the body");
  return parsed ? std::move(*parsed) : nlohmann::json(body);
}

} // namespace

nlohmann::json queue_stats_json(const QueueStats& s)
{
  return {{"name", s.name},
          {"backend", s.backend},
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
          {"purged", s.purged},
          {"dlqExpired", s.dlq_expired},
          {"dlqPurged", s.dlq_purged}};
}

nlohmann::json dead_letter_json(const Message& m)
{
  return {{"messageId", m.message_id},
          {"sequenceNumber", format_sequence(m.seq)},
          {"groupId", m.group_id},
          {"deduplicationId", m.dedup_id},
          {"reason", m.dead_reason},
          {"lastError", m.last_error},
          {"failures", m.failures},
          {"receiveCount", m.receive_count},
          {"sentAt", format_timestamp(m.sent_at_ms)},
          {"firstSentAt", format_timestamp(m.first_sent_at_ms)},
          {"deadLetteredAt", format_timestamp(m.dead_at_ms)},
          {"body", body_json(m.body)}};
}

const char* waiting_state(const Message& m, int64_t now_ms)
{
  if (m.visible_at_ms <= now_ms) return "visible";
  return m.in_flight ? "inFlight" : "delayed";
}

nlohmann::json waiting_messages_json(const std::vector<Message>& messages, int64_t now_ms)
{
  nlohmann::json list = nlohmann::json::array();
  for (const auto& m : messages) {
    list.push_back({{"messageId", m.message_id},
                    {"sequenceNumber", format_sequence(m.seq)},
                    {"groupId", m.group_id},
                    {"deduplicationId", m.dedup_id},
                    {"state", waiting_state(m, now_ms)},
                    {"receiveCount", m.receive_count},
                    {"failures", m.failures},
                    {"lastError", m.last_error},
                    {"sentAt", format_timestamp(m.sent_at_ms)},
                    {"firstSentAt", format_timestamp(m.first_sent_at_ms)},
                    {"visibleAt", format_timestamp(m.visible_at_ms)},
                    {"body", body_json(m.body)}});
  }
  const auto count = static_cast<int64_t>(list.size());
  return {{"messages", std::move(list)}, {"count", count}};
}

nlohmann::json dead_letters_json(const Queue::DlqPage& page)
{
  nlohmann::json list = nlohmann::json::array();
  for (const auto& m : page.messages) list.push_back(dead_letter_json(m));
  return {{"messages", std::move(list)}, {"total", page.total}};
}

const char* group_block_name(GroupBlock block)
{
  switch (block) {
  case GroupBlock::in_flight: return "inFlight";
  case GroupBlock::retry_delay: return "retryDelay";
  case GroupBlock::none: break;
  }
  return nullptr;
}

nlohmann::json groups_json(const GroupsReport& report)
{
  nlohmann::json list = nlohmann::json::array();
  for (const auto& g : report.groups) {
    const char* blocked = group_block_name(g.blocked);
    list.push_back({{"groupId", g.group_id},
                    {"depth", g.depth},
                    {"inFlight", g.in_flight},
                    {"blocked", blocked != nullptr ? nlohmann::json(blocked) : nlohmann::json()},
                    {"headMessageId", g.head_message_id},
                    {"headSequenceNumber", format_sequence(g.head_seq)},
                    {"headFirstSentAt", format_timestamp(g.head_first_sent_at_ms)},
                    {"headAgeMs", std::max<int64_t>(0, report.now_ms - g.head_first_sent_at_ms)},
                    {"headVisibleAt", format_timestamp(g.head_visible_at_ms)}});
  }
  const auto count = static_cast<int64_t>(list.size());
  return {{"groups", std::move(list)},
          {"count", count},
          {"omitted", report.matched - count},
          {"totals",
           {{"groups", report.total_groups},
            {"messages", report.total_messages},
            {"inFlight", report.total_in_flight},
            {"blocked", report.total_blocked}}}};
}

} // namespace acmo
