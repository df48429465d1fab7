// Identifiers the queue hands out: message ids, receipt handles and sequence numbers.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace acmo {

// A random RFC 4122 version-4 UUID, e.g. "3f1c…-…". Cheap: a per-thread PRNG seeded once.
std::string new_message_id();

// A random 64-bit value from the same per-thread generator.
uint64_t random_u64();

// An order id for a CREATE without one: "ord_" and 20 random base-32 characters.
std::string new_order_id();

// A sequence number as SQS shows it: 20 decimal digits, zero-padded, so it sorts as text too.
std::string format_sequence(int64_t seq);

// A receipt handle names one receive of one message. It is opaque to users: the message's
// sequence and a token drawn for that receive, encoded as URL-safe base64 with a version tag.
struct Receipt {
  int64_t seq = 0;
  uint64_t token = 0;
};

std::string encode_receipt(const Receipt& receipt);
// Returns nothing if `text` is not a receipt handle acmo issued.
std::optional<Receipt> decode_receipt(std::string_view text);

} // namespace acmo
