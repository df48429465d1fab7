#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace acmo {

// Lower-case hex SHA-256 of `data`: the deduplication id of content-based deduplication.
std::string sha256_hex(std::string_view data);

// The raw 32 bytes of SHA-256 of `data`.
std::array<unsigned char, 32> sha256_bytes(std::string_view data);

// A digest in lower-case hex.
std::string hex_of(const std::array<unsigned char, 32>& digest);

// The first 8 bytes of a digest as a number (never 0, which means "not known"): the body
// fingerprint the queues keep beside a dedup id (SendRequest::same_body).
int64_t hash_word(const std::array<unsigned char, 32>& digest);

} // namespace acmo
