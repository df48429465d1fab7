#include "core/handler/handler_registry.hpp"

#include <unistd.h>

#include <fmt/core.h>

#include "core/util/ids.hpp"

namespace acmo {

std::string HandlerRecord::state(int64_t now_ms) const
{
  if (stopped_at_ms != 0) return "stopped";
  return now_ms - heartbeat_at_ms > k_heartbeat_timeout_ms ? "gone" : "running";
}

std::string host_name()
{
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "localhost";
  return buf;
}

std::string new_handler_id()
{
  return fmt::format("{}:{}:{:04x}", host_name(), ::getpid(), random_u64() & 0xffff);
}

Expected<void> request_handler(Queue& queue, std::string_view id, std::string_view request,
                               int64_t now_ms)
{
  auto handlers = list_handlers(queue, now_ms);
  if (!handlers) return Unexpected(handlers.error());
  const HandlerRecord* found = nullptr;
  for (const auto& h : *handlers) {
    if (h.id == id) found = &h;
  }
  if (found == nullptr) {
    return make_error(Errc::not_found,
                      fmt::format("no handler {} was seen in the last hour; acmo handlers lists "
                                  "them",
                                  id));
  }
  if (const std::string state = found->state(now_ms); state != "running") {
    return make_error(Errc::conflict, fmt::format("handler {} is not running: it is {}", id,
                                                  state));
  }
  return queue.request_handler(id, request);
}

Expected<std::vector<HandlerRecord>> list_handlers(Queue& queue, int64_t now_ms)
{
  return queue.handlers(now_ms - 3'600'000);
}

} // namespace acmo
