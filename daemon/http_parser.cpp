#include "daemon/http_parser.hpp"

#include <fmt/core.h>

namespace acmo::daemon {

namespace {

// RFC 9110's tchar: the characters of a token (a method, a header name).
bool is_tchar(char c)
{
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
  case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+': case '-':
  case '.': case '^': case '_': case '`': case '|': case '~':
    return true;
  default:
    return false;
  }
}

bool is_token(std::string_view s)
{
  if (s.empty()) return false;
  for (char c : s) {
    if (!is_tchar(c)) return false;
  }
  return true;
}

// A control character other than a horizontal tab (NUL, CR, LF, DEL, ...).
bool is_ctl(char c)
{
  const auto u = static_cast<unsigned char>(c);
  return (u < 0x20 && c != '\t') || u == 0x7f;
}

std::string_view trim(std::string_view s)
{
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Call `fn` with each element of a comma-separated list, trimmed.
template<typename Fn> void for_each_element(std::string_view list, Fn fn)
{
  while (true) {
    const size_t comma = list.find(',');
    fn(trim(list.substr(0, comma)));
    if (comma == std::string_view::npos) return;
    list.remove_prefix(comma + 1);
  }
}

bool starts_with_ignoring_case(std::string_view s, std::string_view prefix)
{
  return s.size() >= prefix.size() && equals_ignoring_case(s.substr(0, prefix.size()), prefix);
}

} // namespace

void RequestParser::reset()
{
  *this = RequestParser(m_limits);
}

RequestParser::State RequestParser::fail(int status, std::string message)
{
  m_error_status = status;
  m_error_message = std::move(message);
  m_keep_alive = false;
  return State::failed;
}

RequestParser::State RequestParser::parse(std::string_view input)
{
  if (m_error_status != 0) return State::failed;
  if (m_phase == Phase::done) return State::done;
  if (m_phase == Phase::head) {
    const State s = parse_head(input);
    if (s != State::done) return s;
  }
  if (m_phase == Phase::length_body) {
    if (input.size() - m_body_start < m_body_length) return State::need_more;
    m_request.body.assign(input.substr(m_body_start, m_body_length));
    m_consumed = m_body_start + m_body_length;
    m_phase = Phase::done;
    return State::done;
  }
  if (m_phase == Phase::done) return State::done;
  return parse_chunked(input);
}

RequestParser::State RequestParser::parse_head(std::string_view input)
{
  for (; m_pos < input.size(); ++m_pos) {
    const char c = input[m_pos];
    if (c != '\n') {
      if (!m_have_request_line && m_pos - m_line_start >= m_limits.max_request_line) {
        return fail(414, fmt::format("the request line is longer than {} bytes; shorten the "
                                     "path and query",
                                     m_limits.max_request_line));
      }
      if (m_pos >= m_limits.max_head) {
        return fail(431, fmt::format("the request's head is larger than {} bytes",
                                     m_limits.max_head));
      }
      if (is_ctl(c) && c != '\r') {
        return fail(400, "the request's head holds a control character");
      }
      continue;
    }
    if (m_pos == m_line_start || input[m_pos - 1] != '\r') {
      return fail(400, "a line of the request ends with LF alone; lines end with CRLF");
    }
    const std::string_view line = input.substr(m_line_start, m_pos - 1 - m_line_start);
    if (line.find('\r') != std::string_view::npos) {
      return fail(400, "the request's head holds a CR outside a line end");
    }
    m_line_start = m_pos + 1;
    if (!m_have_request_line) {
      // An empty line before the request line is tolerated (RFC 9112 §2.2).
      if (line.empty() && m_line_start <= 4) continue;
      if (!parse_request_line(line)) return State::failed;
      m_have_request_line = true;
      continue;
    }
    if (line.empty()) {
      ++m_pos;
      m_body_start = m_pos;
      return finish_head();
    }
    if (!parse_header_line(line)) return State::failed;
  }
  return State::need_more;
}

bool RequestParser::parse_request_line(std::string_view line)
{
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) {
    fail(400, "the request line is not METHOD TARGET HTTP/1.1, with one space between each");
    return false;
  }
  const std::string_view method = line.substr(0, sp1);
  const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = line.substr(sp2 + 1);
  if (!is_token(method) || method.size() > 32) {
    fail(400, "the request's method is not a token");
    return false;
  }
  if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || version[6] != '.'
      || version[5] < '0' || version[5] > '9' || version[7] < '0' || version[7] > '9') {
    fail(400, "the request line does not end with an HTTP version such as HTTP/1.1");
    return false;
  }
  if (version[5] != '1') {
    fail(505, "only HTTP/1.0 and HTTP/1.1 are served");
    return false;
  }
  m_request.method = std::string(method);
  m_request.version_minor = version[7] == '0' ? 0 : 1;
  m_keep_alive = m_request.version_minor == 1;

  std::string_view path_and_query = target;
  if (target == "*") {
    if (method != "OPTIONS") {
      fail(400, "the target * is for OPTIONS only");
      return false;
    }
  } else if (starts_with_ignoring_case(target, "http://")
             || starts_with_ignoring_case(target, "https://")) {
    // The absolute form (what a client sends to a proxy): the path is what follows the
    // authority.
    const size_t authority = target.find("://") + 3;
    const size_t slash = target.find_first_of("/?", authority);
    if (slash == authority) {
      fail(400, "the request's absolute URI names no host");
      return false;
    }
    path_and_query = slash == std::string_view::npos ? std::string_view("/")
                                                     : target.substr(slash);
    if (!path_and_query.empty() && path_and_query.front() == '?') {
      m_request.query = std::string(path_and_query.substr(1));
      path_and_query = "/";
    }
  } else if (target.empty() || target.front() != '/') {
    fail(400, "the request's target is neither a path (/...) nor an absolute http URI");
    return false;
  }
  const size_t q = path_and_query.find('?');
  if (q != std::string_view::npos) m_request.query = std::string(path_and_query.substr(q + 1));
  if (!percent_decode(path_and_query.substr(0, q), m_request.path, false)) {
    fail(400, "the request's path holds a % that is not followed by two hex digits");
    return false;
  }
  return true;
}

bool RequestParser::parse_header_line(std::string_view line)
{
  if (line.front() == ' ' || line.front() == '\t') {
    fail(400, "a header line is folded onto the next (obsolete, refused)");
    return false;
  }
  const size_t colon = line.find(':');
  if (colon == std::string_view::npos || !is_token(line.substr(0, colon))) {
    fail(400, "a header line is not NAME: VALUE, with a token as its name and no space before ':'");
    return false;
  }
  if (m_request.headers.all().size() >= m_limits.max_headers) {
    fail(431, fmt::format("the request has more than {} header fields", m_limits.max_headers));
    return false;
  }
  m_request.headers.add(std::string(line.substr(0, colon)),
                        std::string(trim(line.substr(colon + 1))));
  return true;
}

RequestParser::State RequestParser::finish_head()
{
  const Headers& h = m_request.headers;
  const size_t hosts = h.count("Host");
  if (hosts > 1 || (hosts == 0 && m_request.version_minor == 1)) {
    return fail(400, "an HTTP/1.1 request has exactly one Host header");
  }
  for (const auto& [name, value] : h.all()) {
    if (!equals_ignoring_case(name, "Connection")) continue;
    for_each_element(value, [&](std::string_view option) {
      if (equals_ignoring_case(option, "close")) m_keep_alive = false;
      if (equals_ignoring_case(option, "keep-alive") && m_request.version_minor == 0) {
        m_keep_alive = true;
      }
    });
  }

  bool chunked = false;
  bool has_length = false;
  for (const auto& [name, value] : h.all()) {
    if (equals_ignoring_case(name, "Transfer-Encoding")) {
      bool only_chunked = true;
      int codings = 0;
      for_each_element(value, [&](std::string_view coding) {
        ++codings;
        only_chunked = only_chunked && equals_ignoring_case(coding, "chunked");
      });
      if (!only_chunked || codings != 1 || chunked) {
        return fail(501, "the only transfer coding acmo takes is chunked, once");
      }
      chunked = true;
    } else if (equals_ignoring_case(name, "Content-Length")) {
      bool valid = true;
      for_each_element(value, [&](std::string_view text) {
        uint64_t n = 0;
        if (text.empty() || text.size() > 18) valid = false;
        for (char c : text) {
          if (c < '0' || c > '9') valid = false;
          n = n * 10 + static_cast<uint64_t>(c - '0');
        }
        if (valid && has_length && n != m_body_length) valid = false;
        has_length = true;
        m_body_length = n;
      });
      if (!valid) {
        return fail(400, "the request's Content-Length is not one whole number of bytes (several "
                         "that differ, or not digits)");
      }
    }
  }
  if (chunked && has_length) {
    return fail(400, "the request has both Content-Length and Transfer-Encoding; send one");
  }
  if (chunked && m_request.version_minor == 0) {
    return fail(400, "HTTP/1.0 has no chunked transfer coding");
  }
  if (has_length && m_body_length > m_limits.max_body) {
    return fail(413, fmt::format("the body is larger than server.max_body ({} bytes)",
                                 m_limits.max_body));
  }
  const bool body_to_come = chunked || m_body_length > 0;
  if (h.has("Expect")) {
    if (!equals_ignoring_case(h.get("Expect"), "100-continue") || h.count("Expect") > 1) {
      return fail(417, "the only expectation acmo meets is Expect: 100-continue");
    }
    m_expect_continue = body_to_come;
  }
  if (chunked) {
    m_phase = Phase::chunk_size;
    m_pos = m_body_start;
    return State::done; // the head is done; parse() goes on with the body
  }
  m_phase = Phase::length_body;
  return State::done;
}

RequestParser::State RequestParser::parse_chunked(std::string_view input)
{
  std::string& body = m_request.body;
  while (m_pos < input.size() || m_phase == Phase::done) {
    switch (m_phase) {
    case Phase::chunk_size:
    case Phase::trailers: {
      const size_t lf = input.find('\n', m_pos);
      if (lf == std::string_view::npos) {
        if (input.size() - m_pos > 4096) return fail(400, "a chunk's size line is too long");
        return State::need_more;
      }
      if (lf == m_pos || input[lf - 1] != '\r') {
        return fail(400, "a line of the chunked body ends with LF alone; lines end with CRLF");
      }
      const std::string_view line = input.substr(m_pos, lf - 1 - m_pos);
      m_pos = lf + 1;
      for (char c : line) {
        if (is_ctl(c)) return fail(400, "a line of the chunked body holds a control character");
      }
      if (m_phase == Phase::trailers) {
        m_trailer_bytes += line.size() + 2;
        if (m_trailer_bytes > m_limits.max_head) {
          return fail(431, "the chunked body's trailer fields are too large");
        }
        if (line.empty()) {
          m_consumed = m_pos;
          m_phase = Phase::done;
          return State::done;
        }
        if (line.find(':') == std::string_view::npos || !is_token(line.substr(0, line.find(':')))) {
          return fail(400, "a trailer line of the chunked body is not NAME: VALUE");
        }
        continue;
      }
      const std::string_view size_text = line.substr(0, line.find(';'));
      if (size_text.empty() || size_text.size() > 15) {
        return fail(400, "a chunk's size is not 1 to 15 hex digits");
      }
      uint64_t size = 0;
      for (char c : size_text) {
        int v = -1;
        if (c >= '0' && c <= '9') v = c - '0';
        if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
        if (c >= 'A' && c <= 'F') v = c - 'A' + 10;
        if (v < 0) return fail(400, "a chunk's size is not 1 to 15 hex digits");
        size = size * 16 + static_cast<uint64_t>(v);
      }
      if (body.size() + size > m_limits.max_body) {
        return fail(413, fmt::format("the body is larger than server.max_body ({} bytes)",
                                     m_limits.max_body));
      }
      m_chunk_left = size;
      m_phase = size == 0 ? Phase::trailers : Phase::chunk_data;
      break;
    }
    case Phase::chunk_data: {
      const size_t take = static_cast<size_t>(std::min<uint64_t>(m_chunk_left, input.size() - m_pos));
      body.append(input.substr(m_pos, take));
      m_pos += take;
      m_chunk_left -= take;
      if (m_chunk_left == 0) m_phase = Phase::chunk_end;
      break;
    }
    case Phase::chunk_end:
      if (input.size() - m_pos < 2) return State::need_more;
      if (input[m_pos] != '\r' || input[m_pos + 1] != '\n') {
        return fail(400, "a chunk is longer than its size says");
      }
      m_pos += 2;
      m_phase = Phase::chunk_size;
      break;
    case Phase::done: return State::done;
    default: return State::need_more;
    }
  }
  return State::need_more;
}

} // namespace acmo::daemon
