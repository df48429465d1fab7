// Identifiers the queue hands out: message ids, receipt handles and sequence numbers.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace acmo {

// A message id is an RFC 9562 version-7 UUID: the milliseconds since the epoch when it was drawn,
// then 74 random bits. Ids drawn one after the other sort near each other, so that an index of
// them grows at its end instead of at random places. The database keeps its 16 bytes; people
// and scripts see the usual text form, e.g. "0193a3c2-9e5b-7d4c-9f00-6a2b3c4d5e6f".
using MessageIdBytes = std::array<unsigned char, 16>;

MessageIdBytes new_message_id_bytes(); // cheap: a per-thread PRNG seeded once
std::string format_message_id(const MessageIdBytes& id);
// Returns nothing if `text` is not a UUID in the text form (either letter case).
std::optional<MessageIdBytes> parse_message_id(std::string_view text);
// new_message_id_bytes() in text form.
std::string new_message_id();

// A random 64-bit value from the same per-thread generator.
uint64_t random_u64();

// An order id for a CREATE without one: "ord_" and 20 random base-32 characters.
std::string new_order_id();
// The order id of a CREATE that has a deduplication id but no order id: "ord_" and 20 base-32
// characters of the SHA-256 of the dedup id, so that the same dedup id names the same order.
std::string order_id_for(std::string_view dedup_id);

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
