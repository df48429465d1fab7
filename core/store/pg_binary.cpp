#include "core/store/pg_binary.hpp"

namespace acmo {

namespace {

// The header of an array in binary format: dimensions, whether any element is NULL, the
// elements' type, then per dimension its length and lower bound. Integers are big-endian.
constexpr size_t k_array_header = 20;

void put_u32(char* at, uint32_t value)
{
  for (int i = 3; i >= 0; --i) {
    at[i] = static_cast<char>(value & 0xff);
    value >>= 8;
  }
}

} // namespace

PgBinaryArray::PgBinaryArray(Type type) : m_type(type), m_bytes(k_array_header, '\0') {}

void PgBinaryArray::element(size_t size)
{
  char length[4];
  put_u32(length, static_cast<uint32_t>(size));
  m_bytes.append(length, 4);
  ++m_count;
}

void PgBinaryArray::add(std::string_view text)
{
  element(text.size());
  m_bytes.append(text);
}

void PgBinaryArray::add(int64_t value)
{
  element(8);
  char bytes[8];
  auto bits = static_cast<uint64_t>(value);
  for (int i = 7; i >= 0; --i) {
    bytes[i] = static_cast<char>(bits & 0xff);
    bits >>= 8;
  }
  m_bytes.append(bytes, 8);
}

void PgBinaryArray::add_jsonb(std::string_view json)
{
  // jsonb_recv's format: a version (1), then the text.
  element(json.size() + 1);
  m_bytes += '\1';
  m_bytes.append(json);
}

void PgBinaryArray::add_bool(bool value)
{
  element(1);
  m_bytes += value ? '\1' : '\0';
}

void PgBinaryArray::add_uuid(const MessageIdBytes& id)
{
  element(id.size());
  m_bytes.append(reinterpret_cast<const char*>(id.data()), id.size());
}

std::string PgBinaryArray::take()
{
  std::string bytes = std::move(m_bytes);
  // An empty array has no dimension.
  put_u32(bytes.data(), m_count == 0 ? 0 : 1);
  put_u32(bytes.data() + 4, 0);
  put_u32(bytes.data() + 8, static_cast<uint32_t>(m_type));
  if (m_count == 0) {
    bytes.resize(12);
  } else {
    put_u32(bytes.data() + 12, m_count);
    put_u32(bytes.data() + 16, 1);
  }
  m_count = 0;
  m_bytes.assign(k_array_header, '\0');
  return bytes;
}

} // namespace acmo
