// libFuzzer target: order events from untrusted text (parse_event: message bodies, JSON Lines,
// what other producers put on the queue). Besides not crashing (ASan, UBSan), every refusal
// must say why, and an accepted event must survive a round trip through its message body.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/orders/order_event.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto event = acmo::parse_event(text);
  if (!event) {
    if (event.error().message.empty()) __builtin_trap(); // a refusal that says nothing
    return 0;
  }
  const std::string body = acmo::event_body(*event);
  auto again = acmo::parse_event(body);
  if (!again || again->type != event->type || again->order_id != event->order_id
      || again->data != event->data || again->group_id != event->group_id
      || again->dedup_id != event->dedup_id) {
    __builtin_trap(); // an accepted event that its own body does not give back
  }
  return 0;
}
