// libFuzzer target: acmo send's event input (cli/event_input.*), as the command reads it. The
// input is a JSON Lines file, read through LineReader from a file descriptor, each line parsed
// as `send --file` parses it; and it is --data of a CREATE, an UPDATE and a DELETE. Besides not
// crashing (ASan, UBSan; deep nesting must not exhaust the stack), the lines read must give the
// input back, every refusal must say why, and an accepted event must survive a round trip
// through its message body.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <sys/mman.h>
#include <unistd.h>

#include "cli/event_input.hpp"
#include "core/orders/order_event.hpp"

namespace {

void check_event(const acmo::Expected<acmo::OrderEvent>& event)
{
  if (!event) {
    if (event.error().message.empty()) __builtin_trap(); // a refusal that says nothing
    return;
  }
  auto again = acmo::parse_event(acmo::event_body(*event));
  if (!again || again->type != event->type || again->data != event->data) __builtin_trap();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  const int fd = ::memfd_create("fuzz-cli-input", MFD_CLOEXEC);
  if (fd < 0) __builtin_trap();
  for (size_t written = 0; written < size;) {
    const ssize_t n = ::write(fd, data + written, size - written);
    if (n <= 0) __builtin_trap();
    written += static_cast<size_t>(n);
  }
  ::lseek(fd, 0, SEEK_SET);
  acmo::cli::LineReader reader(fd);
  std::string line;
  std::string rebuilt;
  bool first = true;
  for (acmo::cli::LineReader::Got got; (got = reader.next(line)) != acmo::cli::LineReader::Got::end;) {
    if (got != acmo::cli::LineReader::Got::line) __builtin_trap(); // no line is too long here
    rebuilt += first ? "" : "\n";
    rebuilt += line;
    first = false;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    check_event(acmo::parse_event(line, "the line"));
  }
  ::close(fd);
  if (!text.empty() && text.back() == '\n') rebuilt += '\n';
  if (rebuilt != text || reader.consumed() != static_cast<int64_t>(size) || reader.error() != 0) {
    __builtin_trap(); // the lines are not the input
  }

  for (const char* type : {"CREATE", "UPDATE", "delete"}) {
    acmo::cli::EventFlags flags;
    flags.type = type;
    flags.order_id = type[0] == 'C' ? "" : "ord_fuzz";
    flags.data = std::string(text);
    check_event(acmo::cli::event_from_flags(flags));
  }
  return 0;
}
