#include "core/util/ids.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <limits>
#include <random>

#include <fmt/core.h>

#include "core/util/sha256.hpp"
#include <pthread.h>

namespace acmo {

namespace {

// Bumped in the child after fork(): a forked process must not replay its parent's random
// stream, or two processes would hand out the same message ids and receipt tokens.
std::atomic<unsigned> g_fork_generation{0};

void on_fork_child() { g_fork_generation.fetch_add(1, std::memory_order_relaxed); }

std::mt19937_64 seeded_generator()
{
  static const int registered = pthread_atfork(nullptr, nullptr, &on_fork_child);
  (void)registered;
  std::random_device rd;
  std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd()};
  return std::mt19937_64(seq);
}

std::mt19937_64& generator()
{
  thread_local std::mt19937_64 gen = seeded_generator();
  thread_local unsigned generation = g_fork_generation.load(std::memory_order_relaxed);
  const unsigned now = g_fork_generation.load(std::memory_order_relaxed);
  if (generation != now) {
    gen = seeded_generator();
    generation = now;
  }
  return gen;
}

constexpr std::string_view k_base64url =
  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
constexpr std::string_view k_receipt_tag = "AQ"; // version 1 of the handle layout

} // namespace

uint64_t random_u64() { return generator()(); }

MessageIdBytes new_message_id_bytes()
{
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  uint64_t hi = (static_cast<uint64_t>(ms) << 16) | (random_u64() & 0x0fffULL);
  hi |= 0x7000ULL;                                                    // version 7
  uint64_t lo = (random_u64() & 0x3fffffffffffffffULL) | 0x8000000000000000ULL; // RFC variant
  MessageIdBytes id{};
  for (size_t i = 0; i < 8; ++i) {
    id[i] = static_cast<unsigned char>(hi >> (56 - 8 * i));
    id[8 + i] = static_cast<unsigned char>(lo >> (56 - 8 * i));
  }
  return id;
}

std::string format_message_id(const MessageIdBytes& id)
{
  static constexpr char k_hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(36);
  for (size_t i = 0; i < id.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += k_hex[id[i] >> 4];
    out += k_hex[id[i] & 15];
  }
  return out;
}

std::optional<MessageIdBytes> parse_message_id(std::string_view text)
{
  if (text.size() != 36) return std::nullopt;
  MessageIdBytes id{};
  size_t n = 0;
  int half = -1;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return std::nullopt;
      continue;
    }
    int v;
    if (c >= '0' && c <= '9') {
      v = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      v = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      v = c - 'A' + 10;
    } else {
      return std::nullopt;
    }
    if (half < 0) {
      half = v;
    } else {
      id[n++] = static_cast<unsigned char>(half * 16 + v);
      half = -1;
    }
  }
  return id;
}

std::string new_message_id() { return format_message_id(new_message_id_bytes()); }

namespace {

std::string order_id_from(uint64_t a, uint64_t b)
{
  constexpr std::string_view alphabet = "0123456789abcdefghjkmnpqrstvwxyz";
  std::string id = "ord_";
  for (int i = 0; i < 20; ++i) {
    uint64_t& src = i < 12 ? a : b;
    id += alphabet[src & 31];
    src >>= 5;
  }
  return id;
}

} // namespace

std::string new_order_id() { return order_id_from(random_u64(), random_u64()); }

std::string order_id_for(std::string_view dedup_id)
{
  auto digest = sha256_bytes(dedup_id);
  uint64_t a = 0;
  uint64_t b = 0;
  for (size_t i = 0; i < 8; ++i) {
    a = (a << 8) | digest[i];
    b = (b << 8) | digest[8 + i];
  }
  return order_id_from(a, b);
}

std::string format_sequence(int64_t seq) { return fmt::format("{:020}", seq); }

std::string encode_receipt(const Receipt& receipt)
{
  std::array<unsigned char, 16> raw{};
  auto seq = static_cast<uint64_t>(receipt.seq);
  for (int i = 0; i < 8; ++i) {
    raw[static_cast<size_t>(i)] = static_cast<unsigned char>(seq >> (56 - 8 * i));
    raw[static_cast<size_t>(8 + i)] = static_cast<unsigned char>(receipt.token >> (56 - 8 * i));
  }
  std::string out(k_receipt_tag);
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : raw) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out += k_base64url[(acc >> bits) & 63];
    }
  }
  if (bits > 0) out += k_base64url[(acc << (6 - bits)) & 63];
  return out;
}

std::optional<Receipt> decode_receipt(std::string_view text)
{
  if (text.size() != k_receipt_tag.size() + 22 || text.substr(0, 2) != k_receipt_tag) {
    return std::nullopt;
  }
  std::array<unsigned char, 16> raw{};
  size_t n = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text.substr(2)) {
    auto pos = k_base64url.find(c);
    if (pos == std::string_view::npos) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(pos);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (n < raw.size()) raw[n++] = static_cast<unsigned char>(acc >> bits);
    }
  }
  if (n != raw.size() || (acc & ((1U << bits) - 1)) != 0) return std::nullopt;
  Receipt r;
  uint64_t seq = 0;
  for (size_t i = 0; i < 8; ++i) {
    seq = (seq << 8) | raw[i];
    r.token = (r.token << 8) | raw[8 + i];
  }
  r.seq = static_cast<int64_t>(seq);
  if (r.seq <= 0 || r.token == 0) return std::nullopt;
  return r;
}

} // namespace acmo
