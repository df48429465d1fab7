// acmo send: put order events on the queue.
#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/event_input.hpp"
#include "cli/output.hpp"
#include "cli/progress.hpp"
#include "core/config/backends.hpp"
#include "core/orders/order.hpp"
#include "core/orders/order_event.hpp"
#include "core/orders/submit.hpp"
#include "core/queue/limits.hpp"
#include "core/util/ids.hpp"
#include "core/util/json_input.hpp"
#include "core/util/paths.hpp"

namespace acmo::cli {

namespace {

struct SendOptions {
  std::string type;
  std::string order_id;
  std::string data;
  std::string group;
  std::string dedup_id;
  std::string file;
  std::string wait; // --wait[=SECS]: "true" without a value, empty without the flag
  int64_t wait_s = 0; // what --wait asked for, in seconds; 0 without it
};

constexpr int64_t k_default_wait_s = 30;
constexpr int64_t k_max_wait_s = 3600;

// At most `limit` bytes of `in`, and whether there were more (then the rest is not read: a
// file such as /dev/zero never ends).
std::string read_at_most(std::istream& in, size_t limit, bool& more)
{
  std::string out(limit + 1, '\0');
  in.read(out.data(), static_cast<std::streamsize>(out.size()));
  out.resize(static_cast<size_t>(in.gcount()));
  more = out.size() > limit;
  if (more) out.resize(limit);
  return out;
}

// --data takes JSON, or @FILE to read it from a file, or @- from stdin; at most a message
// body's size, which no event's data can pass.
std::string load_data_argument(const std::string& arg)
{
  if (arg.empty() || arg[0] != '@') return arg;
  const std::string path = arg.substr(1);
  std::ifstream file;
  if (path != "-") {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) {
      throw Fatal(fmt::format("cannot read the --data file {}: it is a directory; check the path "
                              "after '@'",
                              path),
                  exit_code::k_usage);
    }
    file.open(path, std::ios::binary);
    if (!file) {
      throw Fatal(fmt::format("cannot read the --data file {}: {}; check the path after '@'",
                              path, std::strerror(errno)),
                  exit_code::k_usage);
    }
  }
  bool more = false;
  std::string text = read_at_most(path == "-" ? std::cin : file, limits::k_max_body_bytes, more);
  if (more) {
    throw Fatal(fmt::format("--data {}: more than {} MiB, which no event can be (a message body "
                            "is at most {} bytes)",
                            path == "-" ? "from stdin" : path, limits::k_max_body_bytes >> 20,
                            limits::k_max_body_bytes),
                exit_code::k_rejected);
  }
  return text;
}

void print_result(const GlobalOptions& global, const SendResult& result, const OrderEvent& event)
{
  if (global.json) {
    print_json(send_result_json(result, event));
  } else if (!global.quiet) {
    if (result.duplicate) {
      fmt::print("duplicate {} {}: already queued as message {} (sequence {})\n",
                 event_type_name(event.type), event.order_id, result.message_id,
                 format_sequence(result.seq));
    } else {
      fmt::print("queued {} {} as message {} (sequence {}, group {})\n",
                 event_type_name(event.type), event.order_id, result.message_id,
                 format_sequence(result.seq), event.group_id);
    }
  }
}

// What became of a sent event, for --wait.
struct Outcome {
  std::string state; // "applied", "deadLettered", "timeout", "gone"
  std::string reason;
  nlohmann::json order; // the order after it, when applied and the order still exists
};

// The outcome of a message gone from the queue whose id is in the order's audit trail.
std::optional<Outcome> applied_outcome(const SendResult& sent, const OrderEvent& event,
                                       const GlobalOptions& global)
{
  auto store = open_order_store(config(global), database_path(data_dir(global)));
  if (!store) throw Fatal(store.error());
  auto trail = (*store)->events(event.order_id);
  if (!trail) return std::nullopt;
  for (const auto& e : *trail) {
    if (e.message_id != sent.message_id) continue;
    Outcome out{"applied", "", {}};
    if (auto order = (*store)->get(event.order_id)) out.order = order_to_json(*order);
    return out;
  }
  return std::nullopt;
}

// The message `message_id`, an event of `order_id`, wherever it is now: waiting in the queue
// (under a new sequence number after a redrive) or in the DLQ; nothing when it is gone.
std::optional<Message> find_by_id(Queue& queue, const std::string& message_id,
                                  const std::string& order_id)
{
  PeekFilter filter;
  filter.field = "orderId";
  filter.value = order_id;
  filter.limit = 1000;
  auto waiting = queue.peek(filter);
  if (!waiting) throw Fatal(waiting.error());
  for (auto& m : *waiting) {
    if (m.message_id == message_id) return std::move(m);
  }
  auto dead = queue.dlq_show(message_id);
  if (dead) return std::move(*dead);
  if (dead.error().code != Errc::not_found) throw Fatal(dead.error());
  return std::nullopt;
}

// Poll until the handler has applied the message (it is gone from the queue and its id is in
// the order's audit trail) or dead-lettered it, or `wait_s` pass. A duplicate names its
// message by the sequence number it was sent with; a redrive since gave it a new one, so a
// message gone by its number and not applied is looked for by its id before it is called gone.
Outcome wait_for_outcome(Queue& queue, const SendResult& sent, const OrderEvent& event,
                         int64_t wait_s, const GlobalOptions& global)
{
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(wait_s);
  int64_t seq = sent.seq;
  for (;;) {
    auto found = queue.find(seq);
    if (!found) throw Fatal(found.error());
    if (*found && (*found)->message_id != sent.message_id) *found = std::nullopt;
    if (*found && (*found)->dead_at_ms != 0) return {"deadLettered", (*found)->dead_reason, {}};
    if (!*found) {
      if (auto applied = applied_outcome(sent, event, global)) return *applied;
      auto moved = find_by_id(queue, sent.message_id, event.order_id);
      if (!moved) return {"gone", "the message left the queue without being applied: it was "
                                  "purged or expired", {}};
      if (moved->dead_at_ms != 0) return {"deadLettered", moved->dead_reason, {}};
      seq = moved->seq;
      found = std::move(moved);
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      const Message& m = **found;
      std::string where = m.receive_count == 0
                            ? "it is still queued: is a handler running? `acmo stats` lists them"
                            : fmt::format("it was received {} time(s){}", m.receive_count,
                                          m.last_error.empty() ? ""
                                                               : "; last error: " + m.last_error);
      return {"timeout", fmt::format("not applied within {} s; {}", wait_s, where), {}};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

int send_one(const SendOptions& opts, const GlobalOptions& global)
{
  if (opts.type.empty()) {
    throw Fatal("send needs an event TYPE (CREATE, UPDATE or DELETE) or --file FILE",
                exit_code::k_usage);
  }
  EventFlags flags{opts.type, opts.order_id, load_data_argument(opts.data), opts.group,
                   opts.dedup_id};
  auto built = event_from_flags(flags);
  if (!built) return report(built.error());
  OrderEvent event = std::move(*built);
  complete_event(event, config(global).settings().group_by);

  auto queue = open_queue(global);
  SendRequest request = to_send_request(event);
  if (event.type != EventType::create) {
    auto store = open_order_store(config(global), database_path(data_dir(global)));
    if (store) refuse_unknown_order(request, event, *queue, **store);
  }
  auto result = queue->send(request);
  if (!result) return report(result.error());
  if (opts.wait_s == 0) {
    print_result(global, *result, event);
    return exit_code::k_ok;
  }
  if (!global.json) print_result(global, *result, event);
  const Outcome outcome = wait_for_outcome(*queue, *result, event, opts.wait_s, global);
  if (global.json) {
    nlohmann::json doc = send_result_json(*result, event);
    doc["outcome"] = {{"state", outcome.state}};
    if (!outcome.reason.empty()) doc["outcome"]["reason"] = outcome.reason;
    if (!outcome.order.is_null()) doc["outcome"]["order"] = outcome.order;
    print_json(doc);
  } else if (outcome.state == "applied") {
    if (!global.quiet) {
      fmt::print("applied{}\n",
                 outcome.order.is_null()
                   ? fmt::format(": order {} is deleted", event.order_id)
                   : fmt::format(": order {} is {} (version {})", event.order_id,
                                 outcome.order.value("status", "?"),
                                 outcome.order.value("version", int64_t{0})));
    }
  } else {
    const char* what = outcome.state == "deadLettered" ? "dead-lettered"
                       : outcome.state == "timeout"      ? "waiting gave up"
                                                         : "not applied";
    print_error(fmt::format("{}: {}", what, outcome.reason));
  }
  if (outcome.state == "applied") return exit_code::k_ok;
  if (outcome.state == "deadLettered") return exit_code::k_rejected;
  if (outcome.state == "timeout") return exit_code::k_temporary;
  return exit_code::k_failure;
}

// A part of the lines of `acmo send --file`: sent with one send_bulk, durable before it is
// counted. What it keeps of each event is what the answers print (the order and the group);
// the event's data lives on only in its message body.
struct FilePart {
  std::vector<SendRequest> requests;
  std::vector<std::string> order_ids;
  std::vector<std::string> group_ids;
  std::vector<int64_t> line_numbers;
  std::vector<std::pair<int64_t, std::string>> refused; // lines not sent, with why, in order
  size_t body_bytes = 0;
  int64_t bytes_read = 0; // of the input, once the part was complete

  // A part is sent at 5,000 lines, or once its bodies hold 16 MiB: with the part being read
  // and the one waiting, memory stays bounded whatever the lines' size.
  static constexpr size_t k_max_lines = 5000;
  static constexpr size_t k_max_bytes = 16u << 20;
  bool full() const { return requests.size() >= k_max_lines || body_bytes >= k_max_bytes; }
  bool empty() const { return requests.empty() && refused.empty(); }

  // Whether `later` (the lines after this part's) can join it within the bounds, and join it.
  bool fits(const FilePart& later) const
  {
    return requests.size() + later.requests.size() <= k_max_lines
           && body_bytes + later.body_bytes <= k_max_bytes;
  }
  void append(FilePart&& later)
  {
    auto move_all = [](auto& to, auto& from) {
      to.insert(to.end(), std::make_move_iterator(from.begin()),
                std::make_move_iterator(from.end()));
    };
    move_all(requests, later.requests);
    move_all(order_ids, later.order_ids);
    move_all(group_ids, later.group_ids);
    move_all(line_numbers, later.line_numbers);
    move_all(refused, later.refused);
    body_bytes += later.body_bytes;
    bytes_read = later.bytes_read;
  }
};

// Hands the parts from the reading thread to the sending thread, one at a time: the next
// part is read and checked while the one before is sent. A part handed over while another
// waits joins it if both fit in one, so that lines arriving in small bursts are still sent
// in large parts while the sender is busy.
class PartHandoff
{
public:
  // Waits while a part is waiting already that this one cannot join; false once the sender
  // has stopped.
  bool put(FilePart part)
  {
    std::unique_lock lock(m_mu);
    m_cv.wait(lock, [&] { return !m_waiting || m_part.fits(part) || m_stopped; });
    if (m_stopped) return false;
    if (m_waiting) {
      m_part.append(std::move(part));
      return true;
    }
    m_part = std::move(part);
    m_waiting = true;
    m_cv.notify_all();
    return true;
  }
  void close()
  {
    std::lock_guard lock(m_mu);
    m_closed = true;
    m_cv.notify_all();
  }
  // The next part; nullopt once the reader has closed and every part was taken.
  std::optional<FilePart> take()
  {
    std::unique_lock lock(m_mu);
    m_cv.wait(lock, [&] { return m_waiting || m_closed; });
    if (!m_waiting) return std::nullopt;
    m_waiting = false;
    m_cv.notify_all();
    return std::move(m_part);
  }
  // The sender gives up (an exception): the reader stops at its next part.
  void stop()
  {
    std::lock_guard lock(m_mu);
    m_stopped = true;
    m_cv.notify_all();
  }

private:
  std::mutex m_mu;
  std::condition_variable m_cv;
  FilePart m_part;
  bool m_waiting = false;
  bool m_closed = false;
  bool m_stopped = false;
};

int send_file(const SendOptions& opts, const GlobalOptions& global)
{
  int fd = STDIN_FILENO;
  if (opts.file != "-") {
    fd = ::open(opts.file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      throw Fatal(fmt::format("cannot read {}: {}; check the path given to --file", opts.file,
                              std::strerror(errno)),
                  exit_code::k_usage);
    }
  }
  struct Closer {
    int fd;
    ~Closer()
    {
      if (fd != STDIN_FILENO) ::close(fd);
    }
  } closer{fd};
  struct stat st{};
  if (::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    throw Fatal(fmt::format("{} is a directory; --file takes a JSON Lines file, or '-' for stdin",
                            opts.file == "-" ? "stdin" : opts.file),
                exit_code::k_usage);
  }
  // The size of a regular file makes a bar with a percentage; a pipe gets a count.
  const int64_t total_bytes = S_ISREG(st.st_mode) ? static_cast<int64_t>(st.st_size) : 0;
  Progress progress("events", total_bytes, progress_wanted(global.json, global.quiet));
  auto queue = open_queue(global);
  const std::string group_by = config(global).settings().group_by;
  int64_t sent = 0;
  int64_t duplicates = 0;
  int64_t failed = 0;
  int64_t unanswered = 0; // of them, lines the queue could not take for now (exit 75)

  // The sending thread: each part's send_bulk, then its lines' answers and errors in line
  // order.
  PartHandoff handoff;
  std::exception_ptr send_failure;
  std::thread sender([&] {
    try {
      while (auto part = handoff.take()) {
        std::vector<Expected<SendResult>> results;
        if (!part->requests.empty()) results = queue->send_bulk(part->requests);
        size_t refused = 0;
        for (size_t i = 0; i <= results.size(); ++i) {
          const int64_t line = i < results.size() ? part->line_numbers[i] : INT64_MAX;
          for (; refused < part->refused.size() && part->refused[refused].first < line;
               ++refused) {
            ++failed;
            print_error(part->refused[refused].second);
          }
          if (i == results.size()) break;
          if (!results[i]) {
            ++failed;
            if (exit_code_for(results[i].error()) == exit_code::k_temporary) ++unanswered;
            print_error(fmt::format("line {}: {}", line, results[i].error().message));
            continue;
          }
          ++(results[i]->duplicate ? duplicates : sent);
          if (global.json) {
            OrderEvent event;
            event.order_id = std::move(part->order_ids[i]);
            event.group_id = std::move(part->group_ids[i]);
            print_json(send_result_json(*results[i], event));
          }
        }
        if (global.json) std::fflush(stdout); // a reader at the other end of a pipe sees them now
        progress.update(part->bytes_read, sent + duplicates + failed);
      }
    } catch (...) {
      send_failure = std::current_exception();
      handoff.stop();
    }
  });
  // However the reading ends (an exception included), the sender finishes the parts handed
  // over and stops before this function returns.
  struct Joiner {
    PartHandoff& handoff;
    std::thread& sender;
    void finish()
    {
      if (!sender.joinable()) return;
      handoff.close();
      sender.join();
    }
    ~Joiner() { finish(); }
  } joiner{handoff, sender};

  FilePart part;
  LineReader reader(fd);
  std::string line;
  int64_t line_number = 0;
  bool stopped = false;
  for (LineReader::Got got; !stopped && (got = reader.next(line)) != LineReader::Got::end;) {
    ++line_number;
    if (got == LineReader::Got::too_long) {
      part.refused.emplace_back(
        line_number, fmt::format("line {}: longer than {} MiB, which no event can be (a message "
                                 "body is at most {} MiB); skipped",
                                 line_number, LineReader::k_max_line >> 20,
                                 limits::k_max_body_bytes >> 20));
    } else if (line.find_first_not_of(" \t\r") != std::string::npos) {
      auto event = parse_event(line, "the line", true);
      if (!event) {
        part.refused.emplace_back(
          line_number,
          event.error().field == "body"
            ? fmt::format("line {}: {}; each line is one event object, such as "
                          "{{\"type\":\"DELETE\",\"orderId\":\"ord_1\"}}",
                          line_number, event.error().message)
            : fmt::format("line {}: {}", line_number, event.error().message));
      } else {
        complete_event(*event, group_by);
        part.requests.push_back(to_send_request(*event));
        part.body_bytes += part.requests.back().body.size();
        part.order_ids.push_back(std::move(event->order_id));
        part.group_ids.push_back(std::move(event->group_id));
        part.line_numbers.push_back(line_number);
      }
    }
    // A part goes once full, or once the input has nothing more for now (lines piped in as a
    // producer writes them are sent as they come, not when 5,000 have gathered).
    if (part.full() || (!part.empty() && reader.would_wait())) {
      part.bytes_read = reader.consumed();
      stopped = !handoff.put(std::exchange(part, FilePart{}));
    }
  }
  if (!stopped && !part.empty()) {
    part.bytes_read = reader.consumed();
    handoff.put(std::move(part));
  }
  joiner.finish();
  if (send_failure) std::rethrow_exception(send_failure);
  progress.finish();
  if (global.json) {
    print_json({{"sent", sent}, {"duplicates", duplicates}, {"failed", failed}});
  } else if (!global.quiet) {
    fmt::print("sent {}, duplicates {}, failed {}\n", sent, duplicates, failed);
  }
  if (reader.error() != 0) {
    print_error(fmt::format("reading {} failed after line {}: {}; the lines before it were "
                            "handled as counted above, the rest were not read",
                            opts.file == "-" ? "stdin" : opts.file, line_number,
                            std::strerror(reader.error())));
    return exit_code::k_failure;
  }
  // Lines the queue could not take for now (PostgreSQL down in the middle, a lock held too
  // long) are worth sending again, the whole file even: within the dedup window what was sent
  // comes back a duplicate.
  // That goes before lines refused for what they hold, which a second try refuses again.
  if (unanswered > 0) return exit_code::k_temporary;
  return failed > 0 ? exit_code::k_rejected : exit_code::k_ok;
}

} // namespace

Runner setup_send(CLI::App& sub, const GlobalOptions& global)
{
  auto opts = std::make_shared<SendOptions>();
  sub.add_option("type", opts->type, "Event type: CREATE, UPDATE or DELETE")->option_text("TYPE");
  sub.add_option("--order-id", opts->order_id,
                 "The order the event is about (generated for CREATE when absent)")
    ->option_text("ID");
  sub.add_option("--data", opts->data,
                 "Event data as JSON, or @FILE to read it from FILE (@- reads stdin)")
    ->option_text("JSON|@FILE");
  sub.add_option("--group", opts->group,
                 "Message group (default: orders, or the order id with queue.group_by = \"order\")")
    ->option_text("G");
  sub.add_option("--dedup-id", opts->dedup_id,
                 "Deduplication id (default: SHA-256 of the body)")
    ->option_text("D");
  sub.add_option("--file", opts->file, "Send every event of a JSON Lines FILE ('-' for stdin)")
    ->option_text("FILE|-");
  sub.add_flag("--wait", opts->wait,
               fmt::format("Wait until the handler has applied the event or dead-lettered it, up "
                           "to SECS seconds (default {}), and print the outcome",
                           k_default_wait_s))
    ->option_text("[=SECS]");
  sub.footer("Examples:\n"
             "  acmo send CREATE --data '{\"customer_name\":\"Ada\","
             "\"customer_email\":\"ada@example.com\",\"items\":[]}'\n"
             "  acmo send UPDATE --order-id ord_123 --data '{\"status\":\"processing\"}'\n"
             "  acmo send --file events.jsonl");
  return [opts, &global] {
    if (!opts->file.empty()) {
      if (!opts->wait.empty()) {
        throw Fatal("--wait goes with one event, not --file", exit_code::k_usage);
      }
      if (!opts->type.empty() || !opts->order_id.empty() || !opts->data.empty()
          || !opts->group.empty() || !opts->dedup_id.empty()) {
        throw Fatal("--file takes its events, groups and dedup ids from the file; drop TYPE, "
                    "--order-id, --data, --group and --dedup-id (put groupId and "
                    "deduplicationId on the lines instead)",
                    exit_code::k_usage);
      }
      return send_file(*opts, global);
    }
    opts->wait_s = parse_seconds_flag("--wait", opts->wait, k_default_wait_s, k_max_wait_s);
    return send_one(*opts, global);
  };
}

} // namespace acmo::cli
