#include "core/sha256.hpp"

#include <openssl/sha.h>

namespace acmo {

std::array<unsigned char, 32> sha256_bytes(std::string_view data)
{
  std::array<unsigned char, 32> digest{};
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest.data());
  return digest;
}

std::string sha256_hex(std::string_view data)
{
  auto digest = sha256_bytes(data);
  static constexpr char k_hex[] = "0123456789abcdef";
  std::string out(2 * SHA256_DIGEST_LENGTH, '\0');
  for (size_t i = 0; i < SHA256_DIGEST_LENGTH; ++i) {
    out[2 * i] = k_hex[digest[i] >> 4];
    out[2 * i + 1] = k_hex[digest[i] & 15];
  }
  return out;
}

} // namespace acmo
