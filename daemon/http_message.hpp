// HTTP requests and answers as acmo serve's API sees them: plain values, with no socket behind
// them, so that the API (daemon/api.*) takes a Request and gives a Response, and its tests need
// no server (tests/unit/test_api.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace acmo::daemon {

// Header fields in the order they came. Names compare without regard to letter case.
class Headers
{
public:
  void add(std::string name, std::string value);
  // The first value of `name`, or "" when absent.
  std::string_view get(std::string_view name) const;
  bool has(std::string_view name) const;
  // How many fields are named `name`.
  size_t count(std::string_view name) const;
  const std::vector<std::pair<std::string, std::string>>& all() const { return m_fields; }

private:
  std::vector<std::pair<std::string, std::string>> m_fields;
};

bool equals_ignoring_case(std::string_view a, std::string_view b);

struct Request {
  std::string method;  // as sent: "GET", "POST", ...
  std::string path;    // percent-decoded, without the query: "/api/orders/ord_1"
  std::string query;   // the raw query string, without '?'
  Headers headers;
  std::string body;    // whole, de-chunked
  std::string client;  // the client's address ("127.0.0.1"), for limits and logs
  int version_minor = 1; // HTTP/1.0 or HTTP/1.1

  // The query parameters, percent-decoded ('+' is a space), in their order.
  std::vector<std::pair<std::string, std::string>> params() const;
  // The first value of parameter `name`, or "" when absent.
  std::string param(std::string_view name) const;
  bool has_param(std::string_view name) const;
  // Every value of parameter `name`, in order.
  std::vector<std::string> param_values(std::string_view name) const;
};

struct Response {
  int status = 200;
  std::string content_type;  // "": no Content-Type
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  bool close = false; // end the connection after this answer

  void set_header(std::string name, std::string value);
  std::string_view header(std::string_view name) const;
};

// "OK", "Not Found", ...; "Unknown" for a status acmo never sends.
const char* reason_phrase(int status);

// Percent-decode `text` ('+' as a space when `plus_is_space`). False when an escape is not two
// hex digits.
bool percent_decode(std::string_view text, std::string& out, bool plus_is_space);

} // namespace acmo::daemon
