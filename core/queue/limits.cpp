#include "core/queue/limits.hpp"

#include <cstdint>
#include <cstring>

#include <fmt/core.h>

#include "core/util/sha256.hpp"

namespace acmo::limits {

Expected<void> check_body(std::string_view body)
{
  if (body.empty()) {
    return make_error(Errc::invalid_input, "the message body is empty; send at least one character",
                      "body");
  }
  if (body.size() > k_max_body_bytes) {
    return make_error(Errc::invalid_input,
                      fmt::format("the message body is {} bytes; the limit is {} bytes (1 MiB)",
                                  body.size(), k_max_body_bytes),
                      "body");
  }
  const auto* p = reinterpret_cast<const unsigned char*>(body.data());
  const auto* end = p + body.size();
  while (p < end) {
    // Event bodies are mostly ASCII: skip eight printable ASCII bytes at a time.
    if (end - p >= 8) {
      uint64_t word;
      std::memcpy(&word, p, sizeof word);
      constexpr uint64_t k_high_bits = 0x8080808080808080ULL;
      // For an ASCII byte b, b + 0x60 reaches 0x80 exactly when b >= 0x20, and never carries
      // into the next byte: every high bit set means eight bytes in 0x20-0x7f.
      const bool ascii = (word & k_high_bits) == 0;
      const bool printable = ((word + 0x6060606060606060ULL) & k_high_bits) == k_high_bits;
      if (ascii && printable) {
        p += 8;
        continue;
      }
    }
    const size_t offset = static_cast<size_t>(p - reinterpret_cast<const unsigned char*>(body.data()));
    uint32_t cp;
    size_t len;
    if (*p < 0x80) {
      cp = *p;
      len = 1;
    } else if ((*p & 0xe0) == 0xc0) {
      cp = *p & 0x1fu;
      len = 2;
    } else if ((*p & 0xf0) == 0xe0) {
      cp = *p & 0x0fu;
      len = 3;
    } else if ((*p & 0xf8) == 0xf0) {
      cp = *p & 0x07u;
      len = 4;
    } else {
      len = 0;
      cp = 0;
    }
    bool ok = len > 0 && static_cast<size_t>(end - p) >= len;
    for (size_t i = 1; ok && i < len; ++i) {
      if ((p[i] & 0xc0) != 0x80) ok = false;
      cp = (cp << 6) | (p[i] & 0x3fu);
    }
    // Reject overlong forms and surrogates, which are not valid UTF-8.
    if (ok && ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)
               || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))) {
      ok = false;
    }
    if (!ok) {
      return make_error(Errc::invalid_input,
                        fmt::format("the message body is not valid UTF-8 (byte offset {})", offset),
                        "body");
    }
    bool allowed = cp == 0x9 || cp == 0xa || cp == 0xd || (cp >= 0x20 && cp <= 0xd7ff)
                   || (cp >= 0xe000 && cp <= 0xfffd) || cp >= 0x10000;
    if (!allowed) {
      return make_error(
        Errc::invalid_input,
        fmt::format("the message body contains character U+{:04X} at byte offset {}, which SQS "
                    "does not allow; {}",
                    cp, offset,
                    cp < 0x20 ? "remove control characters other than tab, LF and CR"
                              : "U+FFFE and U+FFFF are not characters; remove them"),
        "body");
    }
    p += len;
  }
  return {};
}

Expected<void> check_id(std::string_view id, std::string_view field)
{
  if (id.empty() || id.size() > k_max_id_chars) {
    return make_error(Errc::invalid_input,
                      fmt::format("{} must be 1 to {} characters long, not {}", field,
                                  k_max_id_chars, id.size()),
                      std::string(field));
  }
  for (size_t i = 0; i < id.size(); ++i) {
    auto c = static_cast<unsigned char>(id[i]);
    if (c < 0x21 || c > 0x7e) {
      return make_error(Errc::invalid_input,
                        fmt::format("{} may hold only ASCII letters, digits and punctuation; "
                                    "character {} is not allowed",
                                    field, i + 1),
                        std::string(field));
    }
  }
  return {};
}

Expected<SendDedup> check_send(const SendRequest& request, bool content_based_dedup)
{
  if (auto ok = check_body(request.body); !ok) return Unexpected(ok.error());
  if (auto ok = check_id(request.group_id, "groupId"); !ok) return Unexpected(ok.error());
  if (request.dedup_id.empty() && !content_based_dedup) {
    return make_error(Errc::invalid_input,
                      "deduplicationId is required when queue.content_based_dedup is off",
                      "deduplicationId");
  }
  if (!request.dedup_id.empty()) {
    if (auto ok = check_id(request.dedup_id, "deduplicationId"); !ok) {
      return Unexpected(ok.error());
    }
  }
  const auto digest = sha256_bytes(request.body);
  SendDedup out;
  out.body_hash = hash_word(digest);
  if (request.dedup_id.empty()) {
    out.dedup_id = hex_of(digest);
    out.content_based = true;
  } else {
    out.dedup_id = request.dedup_id;
  }
  return out;
}

} // namespace acmo::limits
