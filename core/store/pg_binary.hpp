// Parameters in PostgreSQL's binary format, shared by the order store and the queue.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/util/ids.hpp"

namespace acmo {

// An array parameter in PostgreSQL's binary format (that of array_send): the server copies its
// elements as they are, where a text literal has to be escaped here and parsed there character
// by character (for a batch of bodies, a tenth of the sending backend's time). All elements
// have the type given; none is NULL.
class PgBinaryArray
{
public:
  // The element types, by their type oid.
  enum class Type : uint32_t { boolean = 16, bigint = 20, text = 25, uuid = 2950, jsonb = 3802 };

  explicit PgBinaryArray(Type type);
  void add(std::string_view text);    // text
  void add_jsonb(std::string_view json); // jsonb, from its text (checked by the server)
  void add(const std::string& text) { add(std::string_view(text)); }
  void add(int64_t value);            // bigint
  void add_bool(bool value);          // boolean
  void add_uuid(const MessageIdBytes& id); // uuid
  // Anything else does not compile: say which.
  template<typename T> void add(T) = delete;
  // The parameter's bytes; the array is left empty.
  std::string take();

private:
  void element(size_t size);

  Type m_type;
  uint32_t m_count = 0;
  std::string m_bytes;  // a header's room, then each element: its length and its bytes
};

} // namespace acmo
