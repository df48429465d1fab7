#include "core/util/json_input.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <fmt/core.h>

namespace acmo {

namespace {

using nlohmann::json;

// A decimal number's text ("12.50", "1.25e3", "-0.0012") as its significant digits and the
// power of ten of the last one ("125", 1): two texts of one number compare equal.
std::pair<std::string, long> decimal_of(std::string_view text)
{
  std::string digits;
  long exponent = 0;
  bool fraction = false;
  size_t i = 0;
  if (i < text.size() && (text[i] == '-' || text[i] == '+')) ++i;
  for (; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '.') {
      fraction = true;
    } else if (c >= '0' && c <= '9') {
      if (!(digits.empty() && c == '0')) digits += c;
      if (fraction) --exponent;
    } else {
      break; // 'e' or 'E'
    }
  }
  if (i < text.size()) { // the exponent, clamped: past a few digits it is no finite double
    ++i;
    const bool negative = i < text.size() && text[i] == '-';
    if (i < text.size() && (text[i] == '-' || text[i] == '+')) ++i;
    long power = 0;
    for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
      power = std::min(power * 10 + (text[i] - '0'), 1'000'000L);
    }
    exponent += negative ? -power : power;
  }
  while (!digits.empty() && digits.back() == '0') {
    digits.pop_back();
    ++exponent;
  }
  if (digits.empty()) exponent = 0;
  return {digits, exponent};
}

// Builds the document as nlohmann's own DOM parser does, with two checks on the way: a key
// already present in its object, and nesting past the limit. Both stop the parse at once, so
// a huge or deep document costs no more than the part read before it.
class CheckingBuilder
{
public:
  explicit CheckingBuilder(json& root) : m_root(root) {}

  bool null() { return add(nullptr); }
  bool boolean(bool value) { return add(value); }
  bool number_integer(json::number_integer_t value) { return add(value); }
  bool number_unsigned(json::number_unsigned_t value) { return add(value); }
  bool number_float(json::number_float_t value, const json::string_t& text)
  {
    // A number with more digits than a double keeps would be read as another one, silently
    // ("1.4999999999999999999999" as 1.5): refused, as any number the sender did not mean.
    // What a JSON writer prints for a double (at most 17 significant digits, the shortest
    // that reads back) always passes.
    const std::string kept = fmt::format("{}", value);
    if (std::isfinite(value) && decimal_of(text) != decimal_of(kept)) {
      m_error = fmt::format("holds the number {}, which a double cannot hold exactly (it would "
                            "read as {}); write at most 15 significant digits",
                            text, kept);
      return false;
    }
    return add(value);
  }
  bool string(json::string_t& value) { return add(std::move(value)); }
  bool binary(json::binary_t& value) { return add(std::move(value)); }

  bool start_object(std::size_t)
  {
    json* made = open(json::value_t::object);
    return made != nullptr;
  }
  bool key(json::string_t& name)
  {
    auto [it, inserted] = m_stack.back()->get_ref<json::object_t&>().emplace(name, nullptr);
    if (!inserted) {
      m_error = fmt::format("holds the key \"{}\" twice in one object; give each field once",
                            name);
      return false;
    }
    m_slot = &it->second;
    return true;
  }
  bool end_object()
  {
    m_stack.pop_back();
    return true;
  }
  bool start_array(std::size_t) { return open(json::value_t::array) != nullptr; }
  bool end_array()
  {
    m_stack.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& ex)
  {
    // "[json.exception.parse_error.101] parse error at line 1, column 9: syntax error ..."
    std::string what = ex.what();
    if (auto pos = what.find("] "); pos != std::string::npos) what.erase(0, pos + 2);
    m_error = "is not valid JSON: " + what;
    return false;
  }

  const std::string& error() const { return m_error; }

private:
  // Where the next value goes: the root, the slot of the key just read, or the end of the
  // array being read.
  json* place(json&& value)
  {
    if (m_stack.empty()) {
      m_root = std::move(value);
      return &m_root;
    }
    json& parent = *m_stack.back();
    if (parent.is_array()) {
      auto& array = parent.get_ref<json::array_t&>();
      array.push_back(std::move(value));
      return &array.back();
    }
    *m_slot = std::move(value);
    return m_slot;
  }

  template<typename T> bool add(T&& value)
  {
    place(json(std::forward<T>(value)));
    return true;
  }

  json* open(json::value_t type)
  {
    if (static_cast<int>(m_stack.size()) >= k_max_json_depth) {
      m_error = fmt::format("nests deeper than {} levels", k_max_json_depth);
      return nullptr;
    }
    json* made = place(json(type));
    m_stack.push_back(made);
    return made;
  }

  json& m_root;
  std::vector<json*> m_stack; // the open objects and arrays, innermost last
  json* m_slot = nullptr;     // the value of the key read last
  std::string m_error;
};

} // namespace

Expected<nlohmann::json> parse_json_input(std::string_view text, std::string_view what,
                                          std::string_view field)
{
  if (text.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    return make_error(Errc::invalid_input, fmt::format("{} is empty; send a JSON object", what),
                      std::string(field));
  }
  json out;
  CheckingBuilder builder(out);
  if (!json::sax_parse(text.begin(), text.end(), &builder)) {
    return make_error(Errc::invalid_input, fmt::format("{} {}", what, builder.error()),
                      std::string(field));
  }
  return out;
}

} // namespace acmo
