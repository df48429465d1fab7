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

Expected<std::vector<Message>> SnapshotInMemory::messages(bool dead, int64_t after,
                                                          size_t max) const
{
  return page_after(dead ? dead_letters : queued, after, max);
}

Expected<std::vector<MovedDedup>> SnapshotInMemory::dedup(int64_t after, size_t max) const
{
  return page_after(history, after, max);
}

Expected<std::vector<std::string>> SnapshotInMemory::groups() const
{
  std::set<std::string> names;
  for (const auto& m : queued) names.insert(m.group_id);
  return std::vector<std::string>(names.begin(), names.end());
}

} // namespace acmo
