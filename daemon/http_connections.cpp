#include "daemon/http_connections.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "core/util/log.hpp"
#include "daemon/http_parser.hpp"

namespace acmo::daemon {

namespace {

constexpr uint64_t k_listener_tag = ~uint64_t{0};
constexpr uint64_t k_wake_tag = ~uint64_t{0} - 1;
constexpr size_t k_read_chunk = 64 * 1024;
constexpr int k_listen_backlog = 1024;
constexpr int64_t k_linger_us = 1'000'000;    // how long a closing connection's input is drained
constexpr size_t k_linger_bytes = 4 * 1024 * 1024;
constexpr int64_t k_timer_tick_ms = 20;

int64_t now_us()
{
  return std::chrono::duration_cast<std::chrono::microseconds>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}

std::string address_text(const sockaddr_storage& addr)
{
  char text[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&addr)->sin_addr, text, sizeof text);
  } else if (addr.ss_family == AF_INET6) {
    ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_addr, text,
                sizeof text);
  }
  std::string out = text;
  if (out.rfind("::ffff:", 0) == 0 && out.find('.') != std::string::npos) out.erase(0, 7);
  return out;
}

const char* error_code_for(int status)
{
  switch (status) {
  case 408: return "request_timeout";
  case 413: return "payload_too_large";
  case 414: return "uri_too_long";
  case 417: return "expectation_failed";
  case 429: return "too_many_connections";
  case 431: return "header_fields_too_large";
  case 501: return "not_implemented";
  case 503: return "unavailable";
  case 505: return "http_version_not_supported";
  default: return "bad_request";
  }
}

// What a connection is waiting for while it is armed.
enum class Wait : uint8_t {
  idle,    // the first byte of its next request (server.keep_alive_timeout)
  request, // the rest of a request that has begun (server.read_timeout from its first byte)
  write,   // the client to take the rest of an answer (server.write_timeout)
  linger,  // the client to close, after the server ended the connection (k_linger_us)
};

enum : int { k_free, k_armed, k_busy };

// One connection's state. A connection is armed (in the epoll set for one event, touched by
// nobody) or busy (one worker serves it, alone). The fields other than the atomics are the
// busy worker's, or the arming and closing code's under `mu`.
struct Conn {
  std::mutex mu;
  uint32_t gen = 0; // bumped at every close: an event for an earlier connection is ignored
  std::atomic<int> state{k_free};
  std::atomic<int64_t> deadline_us{0};
  Wait wait = Wait::idle;
  std::string client;
  std::string in; // read, not yet consumed by a request
  size_t accounted = 0; // of `in`, counted in the budget of partial requests
  std::string out;
  size_t out_sent = 0;
  bool close_after_out = false;
  bool continue_sent = false;
  bool peer_closed = false;
  int64_t left = 0; // requests it may still make
  int64_t request_started_us = 0;
  size_t lingered = 0;
  std::optional<RequestParser> parser;
};

// Connections by descriptor, in chunks made as they are needed and never freed while the
// server runs, so that a worker holding an event for a connection that was closed meanwhile
// still points at live memory (and finds the generation changed).
class ConnTable
{
public:
  static constexpr int k_chunk = 1024;
  static constexpr int k_chunks = 1024;

  ~ConnTable()
  {
    for (auto& c : m_chunks) delete[] c.load();
  }
  Conn* get(int fd)
  {
    if (fd < 0 || fd >= k_chunk * k_chunks) return nullptr;
    auto& slot = m_chunks[static_cast<size_t>(fd / k_chunk)];
    Conn* chunk = slot.load(std::memory_order_acquire);
    if (chunk == nullptr) {
      std::lock_guard lock(m_grow);
      chunk = slot.load(std::memory_order_acquire);
      if (chunk == nullptr) {
        chunk = new Conn[k_chunk];
        slot.store(chunk, std::memory_order_release);
      }
    }
    return &chunk[fd % k_chunk];
  }
  Conn* find(int fd) const
  {
    if (fd < 0 || fd >= k_chunk * k_chunks) return nullptr;
    Conn* chunk = m_chunks[static_cast<size_t>(fd / k_chunk)].load(std::memory_order_acquire);
    return chunk == nullptr ? nullptr : &chunk[fd % k_chunk];
  }

private:
  std::array<std::atomic<Conn*>, k_chunks> m_chunks{};
  std::mutex m_grow;
};

} // namespace

Response Connections::error(int status, std::string_view code, std::string_view message)
{
  Response r;
  r.status = status;
  r.content_type = "application/json";
  nlohmann::json doc = {{"error", {{"code", code}, {"message", message}, {"details", nullptr}}}};
  r.body = doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return r;
}

struct Connections::Impl {
  ConnectionOptions options;
  RequestHandler& handler;
  ParserLimits limits;
  int listen_fd = -1;
  int epoll_fd = -1;
  int wake_fd = -1;
  int bound_port = 0;
  std::atomic<bool> stopping{false};
  ConnTable table;
  std::atomic<int> max_fd{0};
  // Bytes of partial requests held by every connection, and the most allowed.
  std::atomic<int64_t> buffered{0};
  int64_t budget = 0;
  std::mutex clients_mu;
  std::unordered_map<std::string, int64_t> per_client;
  // Out of descriptors: the listener is out of the epoll set until then (0: listening).
  std::atomic<int64_t> resume_accepting_us{0};
  std::atomic<int64_t> last_accept_warning_us{0};
  std::mutex timer_mu;
  std::condition_variable timer_cv;

  Impl(ConnectionOptions o, RequestHandler& h) : options(std::move(o)), handler(h)
  {
    limits.max_body = static_cast<size_t>(options.max_body);
    budget = std::max<int64_t>(64 << 20, 256 * options.max_body);
    wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    epoll_fd = ::epoll_create1(EPOLL_CLOEXEC);
  }

  ~Impl()
  {
    if (listen_fd >= 0) ::close(listen_fd);
    if (wake_fd >= 0) ::close(wake_fd);
    if (epoll_fd >= 0) ::close(epoll_fd);
  }

  // --- the epoll set ---------------------------------------------------------------------------

  static uint64_t tag(const Conn& c, int fd)
  {
    return (static_cast<uint64_t>(c.gen) << 32) | static_cast<uint32_t>(fd);
  }

  // Give the connection back to the epoll set, waiting for `events`, until `deadline`.
  // Called by the worker that served it.
  void rearm(Conn& c, int fd, uint32_t events, int64_t deadline)
  {
    std::lock_guard lock(c.mu);
    c.deadline_us.store(deadline);
    c.state.store(k_armed);
    epoll_event ev{};
    ev.events = events | EPOLLONESHOT;
    ev.data.u64 = tag(c, fd);
    ::epoll_ctl(epoll_fd, EPOLL_CTL_MOD, fd, &ev);
  }

  // Close a connection that the caller holds (busy, or armed with `c.mu` held).
  void close_locked(Conn& c, int fd)
  {
    ::epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, nullptr);
    ++c.gen;
    c.state.store(k_free);
    buffered.fetch_sub(static_cast<int64_t>(c.accounted));
    c.accounted = 0;
    c.in.clear();
    c.in.shrink_to_fit();
    c.out.clear();
    c.out.shrink_to_fit();
    c.parser.reset();
    {
      std::lock_guard lock(clients_mu);
      auto it = per_client.find(c.client);
      if (it != per_client.end() && --it->second <= 0) per_client.erase(it);
    }
    ::close(fd);
  }

  void close_conn(Conn& c, int fd)
  {
    std::lock_guard lock(c.mu);
    close_locked(c, fd);
  }

  // --- accepting ----------------------------------------------------------------------------

  void listen_again()
  {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLONESHOT;
    ev.data.u64 = k_listener_tag;
    ::epoll_ctl(epoll_fd, EPOLL_CTL_MOD, listen_fd, &ev);
  }

  void accept_some()
  {
    for (int accepted = 0; accepted < 64 && !stopping.load(); ++accepted) {
      sockaddr_storage peer{};
      socklen_t len = sizeof peer;
      const int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&peer), &len,
                               SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) {
        if (errno == EINTR) continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          const int64_t now = now_us();
          if (now - last_accept_warning_us.load() > 10'000'000) {
            log::warn({"accept_failed"}, "cannot accept a connection: {}; raise the open files limit (ulimit -n) "
                      "or lower server.keep_alive_timeout",
                      std::strerror(errno));
            last_accept_warning_us.store(now);
          }
          // Stop listening for 20 ms rather than spin on a listener that stays readable: the
          // connections wait in the backlog, the open ones go on being served, and the timer
          // thread listens again.
          resume_accepting_us.store(now + 20'000);
          return;
        }
        break; // EAGAIN: the backlog is empty
      }
      welcome(fd, address_text(peer));
    }
    if (!stopping.load()) listen_again();
  }

  void welcome(int fd, std::string client)
  {
    int yes = 1; // an answer goes out in one send(): nothing to wait for
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof yes);
    {
      std::lock_guard lock(clients_mu);
      int64_t& n = per_client[client];
      if (n >= options.max_connections_per_client) {
        Response r = Connections::error(
          429, error_code_for(429),
          fmt::format("this address has {} connections open, the most server."
                      "max_connections_per_client allows; reuse or close some",
                      n));
        r.set_header("Retry-After", "1");
        handler.answered_by_connections(r);
        const std::string text = serialize(r, false, true, 1);
        [[maybe_unused]] const ssize_t sent = ::send(fd, text.data(), text.size(), MSG_NOSIGNAL);
        ::shutdown(fd, SHUT_WR);
        ::close(fd);
        if (n == 0) per_client.erase(client);
        return;
      }
      ++n;
    }
    Conn* c = table.get(fd);
    if (c == nullptr) { // a descriptor beyond a million: not served
      std::lock_guard lock(clients_mu);
      if (--per_client[client] <= 0) per_client.erase(client);
      ::close(fd);
      return;
    }
    for (int seen = max_fd.load(); fd > seen && !max_fd.compare_exchange_weak(seen, fd);) {
    }
    std::lock_guard lock(c->mu);
    c->client = std::move(client);
    c->wait = Wait::idle;
    c->out_sent = 0;
    c->close_after_out = false;
    c->continue_sent = false;
    c->peer_closed = false;
    c->left = std::max<int64_t>(1, options.keep_alive_max);
    c->request_started_us = 0;
    c->lingered = 0;
    c->parser.emplace(limits);
    c->deadline_us.store(now_us() + options.keep_alive_timeout_ms * 1000);
    c->state.store(k_armed);
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLONESHOT;
    ev.data.u64 = tag(*c, fd);
    if (::epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) close_locked(*c, fd);
  }

  // --- serving a connection ---------------------------------------------------------------------

  std::string serialize(const Response& r, bool head_request, bool close, int version_minor) const
  {
    std::string out;
    out.reserve(r.body.size() + 256);
    out += fmt::format("HTTP/1.1 {} {}\r\n", r.status, reason_phrase(r.status));
    if (!r.content_type.empty()) {
      out += "Content-Type: ";
      out += r.content_type;
      out += "\r\n";
    }
    if (r.status >= 200 && r.status != 204 && r.status != 304) {
      out += fmt::format("Content-Length: {}\r\n", r.body.size());
    }
    for (const auto& [name, value] : r.headers) {
      out += name;
      out += ": ";
      out += value;
      out += "\r\n";
    }
    if (close) {
      out += "Connection: close\r\n";
    } else {
      if (version_minor == 0) out += "Connection: keep-alive\r\n";
      out += fmt::format("Keep-Alive: timeout={}\r\n",
                         std::max<int64_t>(1, (options.keep_alive_timeout_ms + 999) / 1000));
    }
    out += "\r\n";
    if (!head_request) out += r.body;
    return out;
  }

  enum class Flushed { all, blocked, broken };

  Flushed flush(Conn& c, int fd)
  {
    while (c.out_sent < c.out.size()) {
      const ssize_t n = ::send(fd, c.out.data() + c.out_sent, c.out.size() - c.out_sent,
                               MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        c.out_sent += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Flushed::blocked;
      return Flushed::broken;
    }
    c.out.clear();
    c.out_sent = 0;
    if (c.out.capacity() > 64 * 1024) c.out.shrink_to_fit(); // a big answer is not kept
    return Flushed::all;
  }

  void account(Conn& c)
  {
    const auto now_held = c.in.size();
    buffered.fetch_add(static_cast<int64_t>(now_held) - static_cast<int64_t>(c.accounted));
    c.accounted = now_held;
  }

  // Read what has arrived, without waiting. False when the connection broke. Bytes go through
  // a buffer of the thread's, so that a connection's own buffer holds what it needs and no
  // more.
  bool read_available(Conn& c, int fd)
  {
    thread_local std::array<char, k_read_chunk> buffer;
    const size_t cap = limits.max_head + limits.max_body + 64 * 1024;
    while (c.in.size() < cap) {
      const ssize_t n = ::recv(fd, buffer.data(), std::min(buffer.size(), cap - c.in.size()),
                               MSG_DONTWAIT);
      if (n > 0) {
        if (c.in.empty()) c.request_started_us = now_us();
        c.in.append(buffer.data(), static_cast<size_t>(n));
        if (static_cast<size_t>(n) < buffer.size()) break;
        continue;
      }
      if (n == 0) {
        c.peer_closed = true;
        break;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return false;
    }
    account(c);
    return true;
  }

  // End the connection after the answer in c.out: send it, close the sending side, and drain
  // what the client still sends until it closes, so that unread bytes do not make the close a
  // reset that destroys the answer before the client reads it.
  void end_after_answer(Conn& c, int fd)
  {
    c.close_after_out = true;
    switch (flush(c, fd)) {
    case Flushed::broken: return close_conn(c, fd);
    case Flushed::blocked:
      c.wait = Wait::write;
      return rearm(c, fd, EPOLLOUT, now_us() + options.write_timeout_ms * 1000);
    case Flushed::all: break;
    }
    ::shutdown(fd, SHUT_WR);
    c.wait = Wait::linger;
    c.lingered = 0;
    rearm(c, fd, EPOLLIN, now_us() + k_linger_us);
  }

  // Answer `r` and close. `counted`: the handler made the answer and counted it already.
  void refuse(Conn& c, int fd, Response r, bool counted = false)
  {
    r.close = true;
    if (!counted) handler.answered_by_connections(r);
    c.out += serialize(r, false, true, 1);
    end_after_answer(c, fd);
  }

  // Serve a connection that this worker has taken (busy).
  void serve(Conn& c, int fd)
  {
    switch (c.wait) {
    case Wait::linger: {
      std::array<char, 16 * 1024> sink{};
      for (;;) {
        const ssize_t n = ::recv(fd, sink.data(), sink.size(), MSG_DONTWAIT);
        if (n > 0 && (c.lingered += static_cast<size_t>(n)) < k_linger_bytes) continue;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          return rearm(c, fd, EPOLLIN, c.deadline_us.load());
        }
        return close_conn(c, fd); // the client closed too, or sent too much
      }
    }
    case Wait::write: {
      const Flushed f = flush(c, fd);
      if (f == Flushed::broken) return close_conn(c, fd);
      if (f == Flushed::blocked) return rearm(c, fd, EPOLLOUT, c.deadline_us.load());
      if (c.close_after_out) return end_after_answer(c, fd);
      break; // the answer is out: go on with what the client sent meanwhile
    }
    case Wait::idle:
    case Wait::request:
      if (!read_available(c, fd)) return close_conn(c, fd);
      break;
    }
    answer_whole_requests(c, fd);
  }

  void answer_whole_requests(Conn& c, int fd)
  {
    for (;;) {
      RequestParser& parser = *c.parser;
      const RequestParser::State state = parser.parse(c.in);
      if (state == RequestParser::State::failed) {
        return refuse(c, fd,
                      Connections::error(parser.error_status(), error_code_for(parser.error_status()),
                                         parser.error_message()));
      }
      if (state == RequestParser::State::need_more) {
        if (parser.head_complete() && parser.expects_continue() && !c.continue_sent) {
          c.continue_sent = true;
          if (auto refusal = handler.refuse_early(parser.request())) {
            return refuse(c, fd, std::move(*refusal), true);
          }
          c.out += "HTTP/1.1 100 Continue\r\n\r\n";
          if (flush(c, fd) == Flushed::broken) return close_conn(c, fd);
        }
        if (c.peer_closed || stopping.load()) return close_conn(c, fd);
        if (!c.in.empty() && budget_exceeded()) {
          return refuse(c, fd, Connections::error(503, error_code_for(503),
                                                 "the server holds too many partial requests "
                                                 "now; retry in a moment"));
        }
        if (!c.out.empty()) {
          c.wait = Wait::write;
          return rearm(c, fd, EPOLLOUT, now_us() + options.write_timeout_ms * 1000);
        }
        if (c.in.empty()) {
          c.wait = Wait::idle;
          return rearm(c, fd, EPOLLIN, now_us() + options.keep_alive_timeout_ms * 1000);
        }
        c.wait = Wait::request;
        return rearm(c, fd, EPOLLIN, c.request_started_us + options.read_timeout_ms * 1000);
      }

      // A whole request: answer it.
      Request request = std::move(parser.request());
      request.client = c.client;
      const bool keep_alive = parser.keep_alive();
      c.in.erase(0, parser.consumed());
      if (c.in.empty() && c.in.capacity() > 64 * 1024) c.in.shrink_to_fit();
      account(c);
      parser.reset();
      c.continue_sent = false;
      c.request_started_us = c.in.empty() ? 0 : now_us();
      --c.left;
      const bool head = request.method == "HEAD";
      Response response = handler.handle(request);
      const bool close = response.close || !keep_alive || c.left <= 0 || stopping.load();
      c.out += serialize(response, head, close, request.version_minor);
      if (close) return end_after_answer(c, fd);
      const Flushed f = flush(c, fd);
      if (f == Flushed::broken) return close_conn(c, fd);
      if (f == Flushed::blocked) {
        // No more requests are read until the client takes this answer.
        c.wait = Wait::write;
        return rearm(c, fd, EPOLLOUT, now_us() + options.write_timeout_ms * 1000);
      }
      if (c.in.empty() && c.peer_closed) return close_conn(c, fd);
    }
  }

  bool budget_exceeded() const { return buffered.load() > budget; }

  // --- the threads ------------------------------------------------------------------------------

  void on_event(uint64_t event_tag)
  {
    const int fd = static_cast<int>(event_tag & 0xffffffffu);
    const auto gen = static_cast<uint32_t>(event_tag >> 32);
    Conn* c = table.find(fd);
    if (c == nullptr) return;
    {
      std::lock_guard lock(c->mu);
      if (c->gen != gen || c->state.load() != k_armed) return; // closed meanwhile
      c->state.store(k_busy);
    }
    serve(*c, fd);
  }

  // Leader and followers: one thread at a time waits in epoll_wait (the leader); the others wait
  // to be promoted, the one that went idle last first, so that the threads that work are the
  // few whose caches are warm, and a burst of cheap requests is not spread over every thread
  // of the pool (which made the slowest answers several times slower).
  struct Follower {
    std::condition_variable cv;
    bool promoted = false;
  };
  std::mutex lf_mu;
  std::vector<Follower*> followers; // idle, the last to go idle at the back
  bool has_leader = false;

  bool lead(Follower& me)
  {
    std::unique_lock lock(lf_mu);
    if (has_leader) {
      followers.push_back(&me);
      me.cv.wait(lock, [&] { return me.promoted || stopping.load(); });
      if (!me.promoted) { // stopping: leave the line, which outlives this thread
        followers.erase(std::find(followers.begin(), followers.end(), &me));
        return false;
      }
      me.promoted = false; // has_leader stays true: it is this thread now
      return !stopping.load();
    }
    has_leader = true;
    return !stopping.load();
  }

  void promote()
  {
    std::lock_guard lock(lf_mu);
    if (followers.empty()) {
      has_leader = false;
      return;
    }
    Follower* next = followers.back();
    followers.pop_back();
    next->promoted = true;
    next->cv.notify_one();
  }

  void worker()
  {
    epoll_event ev{};
    Follower me;
    while (!stopping.load()) {
      if (!lead(me)) break;
      const int n = ::epoll_wait(epoll_fd, &ev, 1, -1);
      promote();
      if (n < 0) {
        if (errno == EINTR) continue;
        log::error({"http_loop_failed"}, "the HTTP server's event loop failed: {}", std::strerror(errno));
        stopping.store(true);
        break;
      }
      if (n == 0 || ev.data.u64 == k_wake_tag) continue;
      if (ev.data.u64 == k_listener_tag) {
        accept_some();
        continue;
      }
      on_event(ev.data.u64);
    }
  }

  // Close what went past its deadline, and listen again after a pause for descriptors.
  void timer()
  {
    std::unique_lock lock(timer_mu);
    while (!stopping.load()) {
      timer_cv.wait_for(lock, std::chrono::milliseconds(k_timer_tick_ms));
      if (stopping.load()) break;
      const int64_t now = now_us();
      if (const int64_t resume = resume_accepting_us.load(); resume != 0 && now >= resume) {
        resume_accepting_us.store(0);
        listen_again();
      }
      const int last = max_fd.load();
      for (int fd = 0; fd <= last; ++fd) {
        Conn* c = table.find(fd);
        if (c == nullptr) {
          fd += ConnTable::k_chunk - 1 - fd % ConnTable::k_chunk; // a chunk never made
          continue;
        }
        if (c->state.load() != k_armed || c->deadline_us.load() > now) continue;
        expire(*c, fd, now);
      }
    }
  }

  void expire(Conn& c, int fd, int64_t now)
  {
    std::lock_guard lock(c.mu);
    if (c.state.load() != k_armed || c.deadline_us.load() > now) return;
    if (c.wait == Wait::request) {
      // Tell the client why, if its socket takes it at once; it has stopped sending anyway.
      Response r = Connections::error(
        408, error_code_for(408),
        fmt::format("the request did not arrive whole within server.read_timeout ({} ms)",
                    options.read_timeout_ms));
      handler.answered_by_connections(r);
      const std::string text = serialize(r, false, true, 1);
      [[maybe_unused]] const ssize_t n =
        ::send(fd, text.data(), text.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    close_locked(c, fd);
  }

  void run()
  {
    if (listen_fd < 0) return;
    // The listener is armed for one event at a time (one worker accepts); the wake-up
    // descriptor stays readable once written, so that every worker sees it.
    epoll_event listener{};
    listener.events = EPOLLIN | EPOLLONESHOT;
    listener.data.u64 = k_listener_tag;
    epoll_event wake{};
    wake.events = EPOLLIN;
    wake.data.u64 = k_wake_tag;
    if (::epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listen_fd, &listener) != 0
        || ::epoll_ctl(epoll_fd, EPOLL_CTL_ADD, wake_fd, &wake) != 0) {
      log::error({"http_listener_failed"}, "the HTTP listener failed: {}", std::strerror(errno));
      return;
    }
    std::thread timer_thread([this] { timer(); });
    std::vector<std::thread> workers;
    for (int i = 1; i < std::max(1, options.threads); ++i) workers.emplace_back([this] { worker(); });
    worker();
    for (auto& t : workers) t.join();
    {
      std::lock_guard lock(timer_mu);
    }
    timer_cv.notify_all();
    timer_thread.join();
    ::epoll_ctl(epoll_fd, EPOLL_CTL_DEL, listen_fd, nullptr);
    ::close(listen_fd); // new connections are refused from here on
    listen_fd = -1;
    // Every worker is gone: answer the requests that had arrived whole, then close.
    const int last = max_fd.load();
    for (int fd = 0; fd <= last; ++fd) {
      Conn* c = table.find(fd);
      if (c == nullptr || c->state.load() != k_armed) continue;
      {
        std::lock_guard lock(c->mu);
        if (c->state.load() != k_armed) continue;
        c->state.store(k_busy);
      }
      if (c->wait == Wait::idle || c->wait == Wait::request) serve(*c, fd);
      if (c->state.load() != k_free) close_conn(*c, fd);
    }
  }

  void stop()
  {
    stopping.store(true);
    {
      std::lock_guard lock(lf_mu);
      for (Follower* f : followers) f->cv.notify_one();
    }
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(wake_fd, &one, sizeof one);
    timer_cv.notify_all();
  }

  Expected<void> bind()
  {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    addrinfo* found = nullptr;
    const std::string port_text = std::to_string(options.port);
    const std::string where = fmt::format("{}:{}", options.host, options.port);
    const char* pick = "pick another with --listen HOST:PORT or server.listen";
    const int rc = ::getaddrinfo(options.host.empty() ? nullptr : options.host.c_str(),
                                 port_text.c_str(), &hints, &found);
    int error = EADDRNOTAVAIL;
    if (rc == 0) {
      for (addrinfo* ai = found; ai != nullptr && listen_fd < 0; ai = ai->ai_next) {
        const int fd = ::socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
          error = errno;
          continue;
        }
        // Only SO_REUSEADDR (a restart right after a stop); never SO_REUSEPORT, which would
        // let a second server bind the same port and share its connections unnoticed.
        int yes = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
        if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, k_listen_backlog) == 0) {
          listen_fd = fd;
        } else {
          error = errno;
          ::close(fd);
        }
      }
      ::freeaddrinfo(found);
    }
    if (listen_fd < 0) {
      if (error == EADDRINUSE) {
        return make_error(Errc::unavailable,
                          fmt::format("cannot listen on {}: another process is listening there "
                                      "(`ss -ltnp 'sport = :{}'` shows which); stop it, or {}",
                                      where, options.port, pick),
                          "server.listen");
      }
      if (error == EACCES) {
        return make_error(Errc::conflict,
                          fmt::format("cannot listen on {}: ports below 1024 need root or "
                                      "CAP_NET_BIND_SERVICE; {}",
                                      where, pick),
                          "server.listen");
      }
      // EADDRNOTAVAIL, or a host name that does not resolve: the configuration is at fault.
      return make_error(Errc::invalid_input,
                        fmt::format("cannot listen on {}: {} is not an address of this machine; {}",
                                    where, options.host, pick),
                        "server.listen");
    }
    sockaddr_storage local{};
    socklen_t len = sizeof local;
    ::getsockname(listen_fd, reinterpret_cast<sockaddr*>(&local), &len);
    bound_port = local.ss_family == AF_INET6
                   ? ntohs(reinterpret_cast<const sockaddr_in6*>(&local)->sin6_port)
                   : ntohs(reinterpret_cast<const sockaddr_in*>(&local)->sin_port);
    return {};
  }
};

Connections::Connections(ConnectionOptions options, RequestHandler& handler)
  : m_impl(std::make_unique<Impl>(std::move(options), handler))
{
}

Connections::~Connections() { stop(); }

Expected<void> Connections::bind() { return m_impl->bind(); }

int Connections::port() const { return m_impl->bound_port; }

void Connections::run() { m_impl->run(); }

void Connections::stop() { m_impl->stop(); }

} // namespace acmo::daemon
