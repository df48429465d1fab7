// Text that goes to and comes from PostgreSQL, shared by the order store and the queue.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace acmo {

// An array literal ('{"a","b"}') of text, numbers or booleans, passed as one parameter and
// cast in the statement ($1::text[], $1::bigint[]): one value however many elements.
class PgArray
{
public:
  void add(std::string_view text)
  {
    m_text += m_empty ? "\"" : ",\"";
    m_empty = false;
    for (char c : text) {
      if (c == '"' || c == '\\') m_text += '\\';
      m_text += c;
    }
    m_text += '"';
  }
  void add(const char* text) { add(std::string_view(text)); }
  void add(const std::string& text) { add(std::string_view(text)); }
  void add(int64_t value) { add(std::string_view(std::to_string(value))); }
  void add_bool(bool value) { add(std::string_view(value ? "t" : "f")); }
  // Anything else (a bool, which a pointer would silently become, an int of another width)
  // does not compile: say which.
  template<typename T> void add(T) = delete;
  std::string text() const { return m_text + "}"; }
  bool empty() const { return m_empty; }

private:
  std::string m_text = "{";
  bool m_empty = true;
};

// The first line of a server's or libpq's message, without the trailing newline and spaces.
inline std::string first_line(std::string_view text)
{
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  return std::string(text.substr(0, text.find('\n')));
}

} // namespace acmo
