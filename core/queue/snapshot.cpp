#include "core/queue/queue.hpp"

#include <algorithm>
#include <set>

namespace acmo {

namespace {

// Up to `max` items of `all` (ordered by seq) whose seq is above `after`.
template<typename T>
std::vector<T> page_after(const std::vector<T>& all, int64_t after, size_t max)
{
  auto from = std::find_if(all.begin(), all.end(), [&](const T& x) { return x.seq > after; });
  const auto count = std::min<size_t>(max, static_cast<size_t>(all.end() - from));
  return std::vector<T>(from, from + static_cast<std::ptrdiff_t>(count));
}

} // namespace

Expected<void>
QueueSnapshot::each_page(bool dead, size_t page_size,
                         const std::function<Expected<void>(const std::vector<Message>&)>& fn) const
{
  for (int64_t after = 0;;) {
    auto page = messages(dead, after, page_size);
    if (!page) return Unexpected(page.error());
    if (page->empty()) return {};
    after = page->back().seq;
    if (auto ok = fn(*page); !ok) return ok;
  }
}

Expected<std::vector<Message>> SnapshotInMemory::messages(bool dead, int64_t after,
                                                          size_t max) const
{
  return page_after(dead ? dead_letters : queued, after, max);
}

Expected<std::vector<MovedDedup>> SnapshotInMemory::dedup(int64_t after, size_t max) const
{
  return page_after(history, after, max);
}

Expected<std::vector<std::string>> SnapshotInMemory::groups(const std::string& after,
                                                           size_t max) const
{
  std::set<std::string> names;
  for (const auto& m : queued) {
    if (m.group_id > after) names.insert(m.group_id);
  }
  std::vector<std::string> out;
  for (const auto& name : names) {
    if (out.size() == max) break;
    out.push_back(name);
  }
  return out;
}

Expected<QueueSnapshot::Held> SnapshotInMemory::held(int64_t now_ms) const
{
  Held held;
  for (const auto& m : queued) {
    if (!m.in_flight || m.visible_at_ms <= now_ms) continue;
    ++held.messages;
    held.until_ms = std::max(held.until_ms, m.visible_at_ms);
  }
  return held;
}

} // namespace acmo
