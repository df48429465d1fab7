#include "core/queue/sqlite/dedup_index.hpp"

#include "core/util/sha256.hpp"

namespace acmo::sqlite_queue {

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
