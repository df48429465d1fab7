#pragma once

#include <string>
#include <string_view>

namespace acmo {

// Lower-case hex SHA-256 of `data`: the deduplication id of content-based deduplication.
std::string sha256_hex(std::string_view data);

} // namespace acmo
