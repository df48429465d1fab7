// The SQS limits acmo enforces on what is sent (docs/queue.md §9).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/queue/queue.hpp"
#include "core/util/error.hpp"

namespace acmo::limits {

constexpr size_t k_max_body_bytes = 1'048'576;
constexpr size_t k_max_id_chars = 128;
constexpr size_t k_max_batch = 10;

// Whether `body` is valid UTF-8 made only of the characters SQS allows
// (#x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF), and within the size limit.
Expected<void> check_body(std::string_view body);

// Whether `id` is 1-128 characters of ASCII letters, digits and punctuation; `field` names the
// id in the error ("groupId", "deduplicationId").
Expected<void> check_id(std::string_view id, std::string_view field);

// How a send request is deduplicated, alike on every back-end: its dedup id (the request's, or
// the body's SHA-256 in hex when it is content-based) and the fingerprint of its body
// (hash_word of that SHA-256) that a later send with the same id is compared with
// (SendRequest::same_body).
struct SendDedup {
  std::string dedup_id;
  bool content_based = false;
  int64_t body_hash = 0;
};

// Check `request` against the limits (its body, group id and dedup id) and against the
// queue's queue.content_based_dedup (off: a dedup id is required), and say how it is
// deduplicated.
Expected<SendDedup> check_send(const SendRequest& request, bool content_based_dedup);

} // namespace acmo::limits
