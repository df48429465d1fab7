// The HTTP/1.1 request parser of acmo serve: incremental (a request may arrive a byte at a
// time, and each byte is looked at once), bounded (the request line, the head and the body
// each have a limit, checked as the bytes come), and strict about framing, since a request
// whose length two parsers read differently is how requests are smuggled past a proxy:
//
// - lines end in CRLF; a bare LF, a NUL or another control byte in the head is refused;
// - header names are tokens, directly followed by ':'; folded lines are refused;
// - Content-Length is digits only; several that disagree, or one beside Transfer-Encoding,
//   are refused; the only transfer coding is chunked, and chunk sizes are hex digits only;
// - an HTTP/1.1 request has exactly one Host;
// - the target is a path ("/..."), an absolute URI ("http://host/...", whose path is taken),
//   or "*" for OPTIONS.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "daemon/http_message.hpp"

namespace acmo::daemon {

struct ParserLimits {
  size_t max_request_line = 8 * 1024; // 414 above
  size_t max_head = 64 * 1024;        // the request line and the headers; 431 above
  size_t max_headers = 100;           // 431 above
  size_t max_body = 1'048'576;        // server.max_body; 413 above
};

class RequestParser
{
public:
  explicit RequestParser(ParserLimits limits) : m_limits(limits) {}

  enum class State { need_more, done, failed };

  // Parse `input`: the bytes of the connection not yet consumed by an earlier request, which
  // grow between calls (the parser remembers how far it has read them).
  State parse(std::string_view input);

  // Whether the head has arrived (so request() has its method, path and headers).
  bool head_complete() const { return m_phase != Phase::head; }
  // The request (its head once head_complete(), whole once done).
  Request& request() { return m_request; }
  // The head asked for "100 Continue" before the body is sent, and a body is to come.
  bool expects_continue() const { return m_expect_continue; }
  // Whether the connection may carry another request after this one.
  bool keep_alive() const { return m_keep_alive; }
  // Once done: how many bytes of the input the request took.
  size_t consumed() const { return m_consumed; }
  // Once failed: the status to answer with, and why.
  int error_status() const { return m_error_status; }
  const std::string& error_message() const { return m_error_message; }

  // Start on the next request.
  void reset();

private:
  enum class Phase { head, length_body, chunk_size, chunk_data, chunk_end, trailers, done };

  State fail(int status, std::string message);
  State parse_head(std::string_view input);
  bool parse_request_line(std::string_view line);
  bool parse_header_line(std::string_view line);
  State finish_head();
  State parse_chunked(std::string_view input);

  ParserLimits m_limits;
  Request m_request;
  Phase m_phase = Phase::head;
  size_t m_pos = 0;        // how far the input has been read
  size_t m_line_start = 0; // where the line being read starts
  bool m_have_request_line = false;
  size_t m_body_start = 0;
  uint64_t m_body_length = 0;  // Content-Length
  uint64_t m_chunk_left = 0;   // bytes of the current chunk still to come
  size_t m_trailer_bytes = 0;
  bool m_expect_continue = false;
  bool m_keep_alive = true;
  size_t m_consumed = 0;
  int m_error_status = 0;
  std::string m_error_message;
};

} // namespace acmo::daemon
