// The SQS limits acmo enforces on what is sent (docs/queue.md §9).
#pragma once

#include <cstddef>
#include <string_view>

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

} // namespace acmo::limits
