#include "core/queue/sqlite/dedup_index.hpp"

#include "core/util/sha256.hpp"

namespace acmo::sqlite_queue {

int64_t hash_word(const std::array<unsigned char, 32>& digest)
{
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v = (v << 8) | digest[i];
  return v == 0 ? 1 : static_cast<int64_t>(v);
}

std::string hex_of(const std::array<unsigned char, 32>& digest)
{
  static constexpr char k_hex[] = "0123456789abcdef";
  std::string out(64, '0');
  for (size_t i = 0; i < 32; ++i) {
    out[2 * i] = k_hex[digest[i] >> 4];
    out[2 * i + 1] = k_hex[digest[i] & 0xf];
  }
  return out;
}

DedupKey dedup_key(std::string_view dedup_id)
{
  auto bytes = sha256_bytes(dedup_id);
  DedupKey k;
  for (size_t i = 0; i < 8; ++i) {
    k.a = (k.a << 8) | bytes[i];
    k.b = (k.b << 8) | bytes[8 + i];
  }
  return k;
}

std::string_view key_blob(const DedupKey& k, std::array<unsigned char, 16>& buf)
{
  for (size_t i = 0; i < 8; ++i) {
    buf[i] = static_cast<unsigned char>(k.a >> (56 - 8 * i));
    buf[8 + i] = static_cast<unsigned char>(k.b >> (56 - 8 * i));
  }
  return {reinterpret_cast<const char*>(buf.data()), buf.size()};
}

DedupKey key_from_blob(std::string_view blob)
{
  DedupKey k;
  for (size_t i = 0; i < 8 && i + 8 < blob.size(); ++i) {
    k.a = (k.a << 8) | static_cast<unsigned char>(blob[i]);
    k.b = (k.b << 8) | static_cast<unsigned char>(blob[8 + i]);
  }
  return k;
}

} // namespace acmo::sqlite_queue
