// The events of `acmo send` as they come in: from flags (TYPE, --order-id, --data, --group,
// --dedup-id) and from the lines of a JSON Lines file or stdin. Apart from the command so that
// a fuzz target drives the same code with any bytes (tests/fuzz/fuzz_cli_input.cpp). Events are
// checked by the rules of every entry point (core/util/json_input.hpp, validate_event_data).
#pragma once

#include <cstdint>
#include <string>

#include "core/orders/order_event.hpp"
#include "core/queue/limits.hpp"
#include "core/util/error.hpp"

namespace acmo::cli {

struct EventFlags {
  std::string type;      // CREATE, UPDATE or DELETE, in any letter case
  std::string order_id;  // empty: made for a CREATE, required otherwise
  std::string data;      // the JSON text of --data (already read from a file or stdin)
  std::string group;     // empty: by queue.group_by
  std::string dedup_id;  // empty: content-based
};

// The event the flags describe, or why it cannot be sent (Errc::invalid_input naming the field).
Expected<OrderEvent> event_from_flags(const EventFlags& flags);

// The lines of a file descriptor, read in large chunks. Unlike std::getline, it tells the end
// of the input from a read error, and it does not hold a line longer than any event can be.
class LineReader
{
public:
  enum class Got { line, too_long, end };

  explicit LineReader(int fd) : m_fd(fd) {}

  // The next line, without its '\n'; or too_long for a line over k_max_line bytes (skipped
  // without being held, `line` empty); or end at the end of the input or on a read error
  // (error() then says which; a line cut short by the error is dropped).
  Got next(std::string& line);

  // Whether next() would wait for the input: no whole line is at hand and the input (a pipe, a
  // terminal) has nothing ready to read yet. Never so for a regular file.
  bool would_wait() const;

  int error() const { return m_error; }
  // The bytes of the lines returned so far, newlines included.
  int64_t consumed() const { return m_consumed; }

  // Twice the largest message body: an event line longer than that cannot be sent.
  static constexpr size_t k_max_line = 2 * limits::k_max_body_bytes;

private:
  static constexpr size_t k_chunk = 256 * 1024;
  int m_fd;
  std::string m_buffer;
  size_t m_start = 0; // where the next line begins
  size_t m_scan = 0;  // where to look for its '\n'
  bool m_skipping = false; // in a line over k_max_line
  bool m_end = false;
  int m_error = 0;
  int64_t m_consumed = 0;
};

} // namespace acmo::cli
