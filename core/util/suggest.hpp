// "Did you mean ...?": the known name closest to a misspelt one, for the command line
// (subcommands, flags) and the configuration (keys).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace acmo {

// The Levenshtein distance between `a` and `b`: the fewest single-character insertions,
// deletions and substitutions that turn one into the other.
size_t edit_distance(std::string_view a, std::string_view b);

// The name of `names` closest to `word`, if it is within `max_distance` edits (ties go to the
// first), else the only name that begins with `word` when it has two characters or more past
// its leading dashes; empty when there is none (or when the closest is `word` itself).
std::string closest_name(std::string_view word, const std::vector<std::string>& names,
                         size_t max_distance = 2);

} // namespace acmo
