#include "core/util/sha256.hpp"

#include <stdexcept>

#include <openssl/evp.h>

namespace acmo {

std::array<unsigned char, 32> sha256_bytes(std::string_view data)
{
  // One digest context per thread, reused: the one-shot SHA256() fetches the algorithm and
  // allocates a context on every call, which costs more than hashing a small event.
  struct Context {
    EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    ~Context()
    {
      EVP_MD_CTX_free(ctx);
      EVP_MD_free(md);
    }
  };
  thread_local Context c;
  std::array<unsigned char, 32> digest{};
  unsigned int size = 0;
  if (c.md == nullptr || c.ctx == nullptr || EVP_DigestInit_ex(c.ctx, c.md, nullptr) != 1
      || EVP_DigestUpdate(c.ctx, data.data(), data.size()) != 1
      || EVP_DigestFinal_ex(c.ctx, digest.data(), &size) != 1) {
    throw std::runtime_error("OpenSSL could not compute SHA-256");
  }
  return digest;
}

std::string hex_of(const std::array<unsigned char, 32>& digest)
{
  static constexpr char k_hex[] = "0123456789abcdef";
  std::string out(2 * 32, '\0');
  for (size_t i = 0; i < 32; ++i) {
    out[2 * i] = k_hex[digest[i] >> 4];
    out[2 * i + 1] = k_hex[digest[i] & 15];
  }
  return out;
}

std::string sha256_hex(std::string_view data) { return hex_of(sha256_bytes(data)); }

int64_t hash_word(const std::array<unsigned char, 32>& digest)
{
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v = (v << 8) | digest[i];
  return v == 0 ? 1 : static_cast<int64_t>(v);
}

} // namespace acmo
