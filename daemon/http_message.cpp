#include "daemon/http_message.hpp"

#include <cctype>

namespace acmo::daemon {

namespace {

int hex_value(char c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

} // namespace

bool equals_ignoring_case(std::string_view a, std::string_view b)
{
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i]))
        != std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

void Headers::add(std::string name, std::string value)
{
  m_fields.emplace_back(std::move(name), std::move(value));
}

std::string_view Headers::get(std::string_view name) const
{
  for (const auto& [n, v] : m_fields) {
    if (equals_ignoring_case(n, name)) return v;
  }
  return {};
}

bool Headers::has(std::string_view name) const { return count(name) > 0; }

size_t Headers::count(std::string_view name) const
{
  size_t n = 0;
  for (const auto& field : m_fields) n += equals_ignoring_case(field.first, name) ? 1u : 0u;
  return n;
}

bool percent_decode(std::string_view text, std::string& out, bool plus_is_space)
{
  out.clear();
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '%') {
      if (i + 2 >= text.size()) return false;
      const int hi = hex_value(text[i + 1]);
      const int lo = hex_value(text[i + 2]);
      if (hi < 0 || lo < 0) return false;
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return true;
}

std::vector<std::pair<std::string, std::string>> Request::params() const
{
  std::vector<std::pair<std::string, std::string>> out;
  std::string_view rest = query;
  while (!rest.empty()) {
    const size_t amp = rest.find('&');
    const std::string_view pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    if (pair.empty()) continue;
    const size_t eq = pair.find('=');
    std::string name, value;
    // A parameter that does not decode keeps its raw text: the handler then refuses the value.
    if (!percent_decode(pair.substr(0, eq), name, true)) name = std::string(pair.substr(0, eq));
    if (eq != std::string_view::npos && !percent_decode(pair.substr(eq + 1), value, true)) {
      value = std::string(pair.substr(eq + 1));
    }
    out.emplace_back(std::move(name), std::move(value));
  }
  return out;
}

std::string Request::param(std::string_view name) const
{
  for (auto& [n, v] : params()) {
    if (n == name) return v;
  }
  return {};
}

bool Request::has_param(std::string_view name) const
{
  for (const auto& p : params()) {
    if (p.first == name) return true;
  }
  return false;
}

std::vector<std::string> Request::param_values(std::string_view name) const
{
  std::vector<std::string> out;
  for (auto& [n, v] : params()) {
    if (n == name) out.push_back(std::move(v));
  }
  return out;
}

void Response::set_header(std::string name, std::string value)
{
  for (auto& [n, v] : headers) {
    if (equals_ignoring_case(n, name)) {
      v = std::move(value);
      return;
    }
  }
  headers.emplace_back(std::move(name), std::move(value));
}

std::string_view Response::header(std::string_view name) const
{
  for (const auto& [n, v] : headers) {
    if (equals_ignoring_case(n, name)) return v;
  }
  return {};
}

const char* reason_phrase(int status)
{
  switch (status) {
  case 100: return "Continue";
  case 200: return "OK";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 411: return "Length Required";
  case 413: return "Payload Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 417: return "Expectation Failed";
  case 422: return "Unprocessable Content";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 503: return "Service Unavailable";
  case 505: return "HTTP Version Not Supported";
  default: return "Unknown";
  }
}

} // namespace acmo::daemon
