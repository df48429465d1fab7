#pragma once

#include <array>
#include <string>
#include <string_view>

namespace acmo {

// Lower-case hex SHA-256 of `data`: the deduplication id of content-based deduplication.
std::string sha256_hex(std::string_view data);

// The raw 32 bytes of SHA-256 of `data`.
std::array<unsigned char, 32> sha256_bytes(std::string_view data);

} // namespace acmo
