#include "core/util/suggest.hpp"

#include <algorithm>

namespace acmo {

size_t edit_distance(std::string_view a, std::string_view b)
{
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1] ? 1U : 0U)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

std::string closest_name(std::string_view word, const std::vector<std::string>& names,
                         size_t max_distance)
{
  std::string best;
  size_t best_distance = max_distance + 1;
  for (const auto& name : names) {
    // The distance is at least the difference in length: skip the work (a huge word costs none).
    const size_t gap =
      word.size() > name.size() ? word.size() - name.size() : name.size() - word.size();
    if (gap > max_distance) continue;
    const size_t d = edit_distance(word, name);
    if (d > 0 && d < best_distance) {
      best_distance = d;
      best = name;
    }
  }
  if (!best.empty()) return best;
  // A word cut short ("--order" for "--order-id"): the one name it begins, if it has two
  // characters past its dashes and no other name begins with it.
  const size_t start = word.find_first_not_of('-');
  if (start == std::string_view::npos || word.size() - start < 2) return best;
  for (const auto& name : names) {
    if (name.size() <= word.size() || name.compare(0, word.size(), word) != 0) continue;
    if (!best.empty()) return {};
    best = name;
  }
  return best;
}

} // namespace acmo
