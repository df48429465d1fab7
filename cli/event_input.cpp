#include "cli/event_input.hpp"

#include <algorithm>
#include <cerrno>
#include <utility>

#include <poll.h>
#include <unistd.h>

#include <fmt/core.h>

#include "core/util/json_input.hpp"

namespace acmo::cli {

Expected<OrderEvent> event_from_flags(const EventFlags& flags)
{
  OrderEvent event;
  auto type = parse_event_type(flags.type);
  if (!type) return Unexpected(type.error());
  event.type = *type;
  event.order_id = flags.order_id;
  if (event.order_id.empty() && event.type != EventType::create) {
    return make_error(Errc::invalid_input,
                      fmt::format("{} needs --order-id: the order to change",
                                  event_type_name(event.type)),
                      "orderId");
  }
  if (!event.order_id.empty()) {
    if (auto ok = check_order_id(event.order_id); !ok) return Unexpected(ok.error());
  }
  if (!flags.data.empty()) {
    // The rules of a request body: the same parser, so what the API refuses is refused here.
    auto data = parse_json_input(flags.data, "--data", "data");
    if (!data) {
      const bool unreadable = data.error().message.find("not valid JSON") != std::string::npos
                              || data.error().message.find("is empty") != std::string::npos;
      return make_error(Errc::invalid_input,
                        unreadable ? data.error().message
                                       + "; pass an object such as '{\"status\":\"shipped\"}'"
                                   : data.error().message,
                        "data");
    }
    event.data = std::move(*data);
  }
  if (auto ok = validate_event_data(event.type, event.data, true); !ok) return Unexpected(ok.error());
  event.group_id = flags.group;
  event.dedup_id = flags.dedup_id;
  if (!event.group_id.empty()) {
    if (auto ok = limits::check_id(event.group_id, "groupId"); !ok) return Unexpected(ok.error());
  }
  if (!event.dedup_id.empty()) {
    if (auto ok = limits::check_id(event.dedup_id, "deduplicationId"); !ok) {
      return Unexpected(ok.error());
    }
  }
  return event;
}

bool LineReader::would_wait() const
{
  if (m_end || m_buffer.find('\n', m_scan) != std::string::npos) return false;
  pollfd p{m_fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 0;
}

LineReader::Got LineReader::next(std::string& line)
{
  for (;;) {
    const size_t newline = m_buffer.find('\n', m_scan);
    if (newline != std::string::npos) {
      m_consumed += static_cast<int64_t>(newline + 1 - m_start);
      if (m_skipping) {
        line.clear();
      } else {
        line.assign(m_buffer, m_start, newline - m_start);
      }
      m_start = m_scan = newline + 1;
      return std::exchange(m_skipping, false) ? Got::too_long : Got::line;
    }
    m_scan = m_buffer.size();
    if (m_end) {
      if (m_error != 0 || (m_start == m_buffer.size() && !m_skipping)) return Got::end;
      m_consumed += static_cast<int64_t>(m_buffer.size() - m_start);
      line.assign(m_buffer, m_start); // a last line without '\n'
      if (m_skipping) line.clear();
      m_start = m_scan = m_buffer.size();
      return std::exchange(m_skipping, false) ? Got::too_long : Got::line;
    }
    if (m_buffer.size() - m_start > k_max_line) { // drop what we have of it, keep reading
      m_skipping = true;
      m_consumed += static_cast<int64_t>(m_buffer.size() - m_start);
      m_start = m_scan = m_buffer.size();
    }
    m_buffer.erase(0, m_start);
    m_scan -= m_start;
    m_start = 0;
    const size_t had = m_buffer.size();
    m_buffer.resize(had + k_chunk);
    const ssize_t n = ::read(m_fd, m_buffer.data() + had, k_chunk);
    m_buffer.resize(had + static_cast<size_t>(std::max<ssize_t>(n, 0)));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) m_error = errno;
    if (n <= 0) m_end = true;
  }
}

} // namespace acmo::cli
