#include "daemon/http_server.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <set>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/core.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "core/cached_orders.hpp"
#include "core/handler_registry.hpp"
#include "core/ids.hpp"
#include "core/json_input.hpp"
#include "core/limits.hpp"
#include "core/log.hpp"
#include "core/order.hpp"
#include "core/order_event.hpp"
#include "core/stats_report.hpp"
#include "core/submit.hpp"

namespace acmo::daemon {

namespace {

using nlohmann::json;

constexpr int64_t k_max_list_limit = 1000;
constexpr int k_listen_backlog = 1024;

int64_t now_us()
{
  return std::chrono::duration_cast<std::chrono::microseconds>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}

// cpp-httplib's request parsing, routing and answer writing, over connections acmo accepts and
// serves itself (HttpServer::Impl::run, ConnectionStream), with access to its listening socket.
class Listener : public httplib::Server
{
public:
  int socket() const { return static_cast<int>(svr_sock_); }
  // The listening socket, now the caller's to close (-1 when it was taken before).
  int release_socket() { return static_cast<int>(svr_sock_.exchange(INVALID_SOCKET)); }
  // Read one request from `strm`, answer it. False when there was none, or the connection
  // cannot go on; `closed` when the client asked to close it.
  bool serve(httplib::Stream& strm, bool close_connection, bool& closed)
  {
    return process_request(strm, close_connection, closed, nullptr);
  }
};

// An error answer: {"error": {"code", "message", "details"}}.
void set_error(httplib::Response& res, int status, std::string_view code, std::string_view message,
               json details = nullptr)
{
  res.status = status;
  json doc = {{"error", {{"code", code}, {"message", message}, {"details", std::move(details)}}}};
  res.set_content(doc.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

// The HTTP status of a core error.
int status_for(Errc code)
{
  switch (code) {
  case Errc::invalid_input: return 400;
  case Errc::not_found: return 404;
  case Errc::stale: return 409;
  case Errc::conflict: return 409;
  case Errc::busy: return 503;
  case Errc::unavailable: return 503;
  case Errc::internal: return 500;
  }
  return 500;
}

void set_core_error(httplib::Response& res, const Error& error)
{
  const int status = status_for(error.code);
  json details = error.field.empty() ? json(nullptr) : json{{"field", error.field}};
  set_error(res, status, errc_name(error.code), error.message, std::move(details));
  if (status == 503) res.set_header("Retry-After", "1");
}

// The body of an order request is the event's data, so its fields are named as in the body:
// "customer_name", not "data.customer_name".
Error as_body_error(Error error)
{
  auto strip = [](std::string& text) {
    if (text.rfind("data.", 0) == 0) text.erase(0, 5);
  };
  strip(error.field);
  strip(error.message);
  return error;
}

// "application/json; charset=utf-8" → true.
bool is_json_media_type(std::string_view type)
{
  type = type.substr(0, type.find(';'));
  while (!type.empty() && type.back() == ' ') type.remove_suffix(1);
  while (!type.empty() && type.front() == ' ') type.remove_prefix(1);
  std::string lower;
  for (char c : type) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return lower == "application/json"
         || (lower.rfind("application/", 0) == 0 && lower.size() > 17
             && lower.compare(lower.size() - 5, 5, "+json") == 0);
}

bool same_token(std::string_view a, std::string_view b)
{
  // Compare in time independent of where they differ.
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return diff == 0;
}

bool token_in(std::string_view token, const std::vector<std::string>& tokens)
{
  bool found = false;
  for (const auto& t : tokens) found |= same_token(token, t);
  return found;
}

// Token buckets, one per client (its bearer token, else its address): rate_limit tokens a
// second, at most burst in the bucket.
class RateLimiter
{
public:
  RateLimiter(int64_t rate, int64_t burst)
    : m_rate(static_cast<double>(rate)),
      m_burst(static_cast<double>(burst > 0 ? burst : rate))
  {
  }
  bool enabled() const { return m_rate > 0; }

  // 0 when the request may go, else how many whole seconds until it could (Retry-After).
  int64_t take(const std::string& key)
  {
    const int64_t now = now_us();
    std::lock_guard lock(m_mu);
    if (m_buckets.size() > k_max_clients) prune(now);
    auto [it, inserted] = m_buckets.try_emplace(key, Bucket{m_burst, now});
    Bucket& b = it->second;
    if (!inserted) {
      b.tokens = std::min(m_burst, b.tokens + static_cast<double>(now - b.at_us) * m_rate / 1e6);
      b.at_us = now;
    }
    if (b.tokens >= 1.0) {
      b.tokens -= 1.0;
      return 0;
    }
    return std::max<int64_t>(1, static_cast<int64_t>(std::ceil((1.0 - b.tokens) / m_rate)));
  }

private:
  struct Bucket {
    double tokens;
    int64_t at_us;
  };
  static constexpr size_t k_max_clients = 100'000;

  // Forget the clients whose bucket has filled up again: they lose nothing.
  void prune(int64_t now)
  {
    for (auto it = m_buckets.begin(); it != m_buckets.end();) {
      const double tokens = it->second.tokens + static_cast<double>(now - it->second.at_us) * m_rate / 1e6;
      it = tokens >= m_burst ? m_buckets.erase(it) : std::next(it);
    }
  }

  double m_rate;
  double m_burst;
  std::mutex m_mu;
  std::unordered_map<std::string, Bucket> m_buckets;
};

// Request counts by status and a latency histogram, for /metrics.
class HttpMetrics
{
public:
  static constexpr std::array<double, 12> k_bounds_s = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                       0.05,   0.1,   0.25,   0.5,   1.0,  2.5};

  void count(int status)
  {
    if (status < 100 || status > 599) status = 599;
    m_by_status[static_cast<size_t>(status)].fetch_add(1, std::memory_order_relaxed);
  }

  void observe(int64_t micros)
  {
    size_t i = 0;
    while (i < k_bounds_s.size() && static_cast<double>(micros) > k_bounds_s[i] * 1e6) ++i;
    m_buckets[i].fetch_add(1, std::memory_order_relaxed);
    m_sum_us.fetch_add(micros, std::memory_order_relaxed);
  }

  void write(std::string& out) const
  {
    out += "# HELP acmo_http_requests_total HTTP requests answered, by status code.\n"
           "# TYPE acmo_http_requests_total counter\n";
    for (size_t s = 100; s < m_by_status.size(); ++s) {
      const int64_t n = m_by_status[s].load(std::memory_order_relaxed);
      if (n != 0) out += fmt::format("acmo_http_requests_total{{code=\"{}\"}} {}\n", s, n);
    }
    out += "# HELP acmo_http_request_duration_seconds Time from a request's headers to its "
           "answer.\n# TYPE acmo_http_request_duration_seconds histogram\n";
    int64_t cumulative = 0;
    for (size_t i = 0; i < k_bounds_s.size(); ++i) {
      cumulative += m_buckets[i].load(std::memory_order_relaxed);
      out += fmt::format("acmo_http_request_duration_seconds_bucket{{le=\"{}\"}} {}\n",
                         k_bounds_s[i], cumulative);
    }
    cumulative += m_buckets[k_bounds_s.size()].load(std::memory_order_relaxed);
    out += fmt::format("acmo_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {}\n", cumulative);
    out += fmt::format("acmo_http_request_duration_seconds_sum {}\n",
                       static_cast<double>(m_sum_us.load(std::memory_order_relaxed)) / 1e6);
    out += fmt::format("acmo_http_request_duration_seconds_count {}\n", cumulative);
  }

private:
  std::array<std::atomic<int64_t>, 600> m_by_status{};
  std::array<std::atomic<int64_t>, k_bounds_s.size() + 1> m_buckets{};
  std::atomic<int64_t> m_sum_us{0};
};

// When the request being answered on this thread started (0: it never reached routing).
thread_local int64_t t_request_start_us = 0;
// Whether the answer written last on this thread says "Connection: close": the request's
// framing could not be trusted (a bad request line, header or length), so nothing after it
// on the connection is read as a request.
thread_local bool t_answer_closes = false;

// The text form of a socket address, and its port.
void address_of(const sockaddr_storage& addr, std::string& ip, int& port)
{
  char text[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&addr);
    ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
    port = ntohs(in->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&addr);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
    port = ntohs(in6->sin6_port);
  } else {
    port = -1;
  }
  ip = text;
}

void set_socket_timeout(int fd, int option, int64_t ms)
{
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ms / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, option, &tv, sizeof tv);
}

// One connection as cpp-httplib's request parser sees it. cpp-httplib's own SocketStream,
// made afresh for every request, polls the socket before each read and each write, writes an
// answer's headers and body with two send()s, and drops what a client pipelined behind the
// request it reads. This one lives as long as the connection: it reads what has arrived in
// one recv() and keeps the rest for the next request, gathers the answer in memory and sends
// it with one send() (one TCP segment, one wake-up of the client) once the request is
// answered, and waits in poll() only when a request is still arriving.
class ConnectionStream final : public httplib::Stream
{
public:
  ConnectionStream(int fd, const sockaddr_storage& peer, int64_t read_timeout_ms)
    : m_fd(fd), m_read_timeout_ms(read_timeout_ms)
  {
    address_of(peer, m_remote_ip, m_remote_port);
    sockaddr_storage local{};
    socklen_t len = sizeof local;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
      address_of(local, m_local_ip, m_local_port);
    }
  }

  bool is_readable() const override { return m_begin < m_end || poll_in(m_read_timeout_ms); }
  bool is_writable() const override { return true; } // answers are gathered, then flushed

  ssize_t read(char* ptr, size_t size) override
  {
    if (m_begin == m_end) {
      // Never wait for the client while it waits for us (100 Continue).
      if (!flush()) return -1;
      if (!fill(false)) return -1;
    }
    const size_t n = std::min(size, m_end - m_begin);
    std::memcpy(ptr, m_in.data() + m_begin, n);
    m_begin += n;
    return static_cast<ssize_t>(n);
  }

  ssize_t write(const char* ptr, size_t size) override
  {
    m_out.append(ptr, size);
    if (m_out.size() >= k_flush_at && !flush()) return -1;
    return static_cast<ssize_t>(size);
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override
  {
    ip = m_remote_ip;
    port = m_remote_port;
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override
  {
    ip = m_local_ip;
    port = m_local_port;
  }
  socket_t socket() const override { return m_fd; }

  // Whether bytes of a next request are here already.
  bool buffered() const { return m_begin < m_end; }

  // Wait for the first bytes of the next request: in a recv() that blocks up to the socket's
  // SO_RCVTIMEO, or, with `now_only`, not at all.
  enum class Wait { got, closed, nothing };
  Wait wait_request(bool now_only)
  {
    if (fill(true, now_only)) return Wait::got;
    return m_timed_out ? Wait::nothing : Wait::closed;
  }

  // Send what was written. False when the client is gone or stalls past the write timeout
  // (the socket's SO_SNDTIMEO).
  bool flush()
  {
    size_t sent = 0;
    while (sent < m_out.size()) {
      const ssize_t n = ::send(m_fd, m_out.data() + sent, m_out.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        m_out.clear();
        return false;
      }
      sent += static_cast<size_t>(n);
    }
    m_out.clear();
    return true;
  }

private:
  static constexpr size_t k_flush_at = 256 * 1024;

  bool poll_in(int64_t timeout_ms) const
  {
    pollfd p{m_fd, POLLIN, 0};
    for (;;) {
      const int r = ::poll(&p, 1, static_cast<int>(timeout_ms));
      if (r < 0 && errno == EINTR) continue;
      return r > 0;
    }
  }

  bool fill(bool idle, bool now_only = false)
  {
    m_begin = m_end = 0;
    m_timed_out = false;
    for (;;) {
      // Between requests a blocking recv(): one system call per request. Within one, what is
      // there now, then poll() up to server.read_timeout for the rest.
      const int flags = idle && !now_only ? 0 : MSG_DONTWAIT;
      const ssize_t n = ::recv(m_fd, m_in.data(), m_in.size(), flags);
      if (n > 0) {
        m_end = static_cast<size_t>(n);
        return true;
      }
      if (n == 0) return false;
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return false;
      if (idle) {
        m_timed_out = true; // nothing came in the wait
        return false;
      }
      if (!poll_in(m_read_timeout_ms)) return false;
    }
  }

  int m_fd;
  int64_t m_read_timeout_ms;
  std::string m_remote_ip, m_local_ip;
  int m_remote_port = -1, m_local_port = -1;
  std::array<char, 16 * 1024> m_in{};
  size_t m_begin = 0, m_end = 0;
  bool m_timed_out = false;
  std::string m_out;
};

enum class Access { open, api, admin };

struct Context {
  const httplib::Request& req;
  httplib::Response& res;
  std::string id;  // the :id of the path, if the route has one
  json body;       // the parsed body, for routes that take one
};

} // namespace

struct HttpServer::Impl {
  using Handler = void (Impl::*)(Context&);

  struct Route {
    const char* method;
    const char* pattern; // segments; ":id" matches one
    Access access;
    bool takes_body;
    Handler handler;
  };

  HttpServerOptions options;
  HttpServerParts parts;
  Listener http;
  RateLimiter limiter;
  HttpMetrics metrics;
  int bound_port = 0;
  std::vector<Route> routes;

  // Read stores, each used by one request at a time.
  std::vector<std::unique_ptr<OrderStore>> stores;
  std::vector<std::unique_ptr<std::mutex>> store_locks;
  std::atomic<size_t> next_store{0};

  // Open connections, as stop() sees them: one waiting for its next request (idle) is woken
  // and closed; one being answered (busy) finishes its request first.
  enum : int { k_busy, k_idle, k_closing };
  struct Connection {
    int fd;
    std::atomic<int> state{k_busy};
  };
  std::mutex connections_lock;
  std::unordered_set<Connection*> connections;
  std::atomic<bool> stopping{false};
  int wake_fd = -1; // an eventfd: stop(), and a thread that parks a connection, wake run()

  // A connection waiting for its next request holds a thread of the pool for k_park_after_ms
  // at most (a client that sends one request after another is answered without a hand-off);
  // then it is parked: run() watches it in epoll, gives it back to the pool when bytes arrive,
  // and closes it once it has been idle for server.keep_alive_timeout. New connections start
  // parked. So idle connections, however many, hold no thread: server.threads bounds the
  // requests answered at once, not the connections open.
  static constexpr int64_t k_park_after_ms = 50;
  struct Parked {
    int fd;
    sockaddr_storage peer;
    int64_t left;        // requests it may still make (server.keep_alive_max)
    int64_t deadline_us; // idle until then: closed
  };
  int epoll_fd = -1;
  std::mutex park_lock;
  std::vector<Parked> to_park; // handed to run() by the pool's threads
  bool parking_closed = false; // run() is done: a connection is closed instead of parked

  Impl(HttpServerOptions o, HttpServerParts p)
    : options(std::move(o)), parts(std::move(p)), limiter(options.rate_limit, options.rate_burst)
  {
    wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    epoll_fd = ::epoll_create1(EPOLL_CLOEXEC);
    routes = {
      {"GET", "/api/orders", Access::api, false, &Impl::list_orders},
      {"POST", "/api/orders", Access::api, true, &Impl::create_order},
      {"GET", "/api/orders/:id", Access::api, false, &Impl::get_order},
      {"PUT", "/api/orders/:id", Access::api, true, &Impl::update_order},
      {"DELETE", "/api/orders/:id", Access::api, false, &Impl::delete_order},
      {"PATCH", "/api/orders/:id/status", Access::api, true, &Impl::update_order},
      {"GET", "/api/orders/:id/events", Access::api, false, &Impl::order_events},
      {"GET", "/sqs/stats", Access::api, false, &Impl::sqs_stats},
      {"DELETE", "/sqs/purge", Access::admin, false, &Impl::sqs_purge},
      {"GET", "/sqs/dlq", Access::admin, false, &Impl::dlq_list},
      {"POST", "/sqs/dlq/redrive", Access::admin, false, &Impl::dlq_redrive},
      {"GET", "/handler/status", Access::api, false, &Impl::handler_status},
      {"GET", "/handler/stats", Access::api, false, &Impl::handler_stats},
      {"GET", "/cache/stats", Access::api, false, &Impl::cache_stats},
      {"GET", "/cache/keys", Access::api, false, &Impl::cache_keys},
      {"DELETE", "/cache/clear", Access::admin, false, &Impl::cache_clear},
      {"GET", "/health", Access::open, false, &Impl::health},
      {"GET", "/metrics", Access::api, false, &Impl::prometheus},
    };
    configure();
  }

  ~Impl()
  {
    close_listener();
    if (wake_fd >= 0) ::close(wake_fd);
    if (epoll_fd >= 0) ::close(epoll_fd);
  }

  // --- plumbing ------------------------------------------------------------------------------

  void close_listener()
  {
    if (const int fd = http.release_socket(); fd >= 0) {
      ::shutdown(fd, SHUT_RDWR);
      ::close(fd);
    }
  }

  // Accept connections until stop() and watch the parked ones; a connection with a request
  // arriving is served on a thread of a pool of server.threads (the others wait their turn).
  // Then close the listening socket and the parked connections, and return once every
  // request being answered is answered.
  void run()
  {
    const int listen_fd = http.socket();
    if (listen_fd < 0) return;
    ::fcntl(listen_fd, F_SETFL, ::fcntl(listen_fd, F_GETFL) | O_NONBLOCK);
    httplib::ThreadPool pool(static_cast<size_t>(std::max(1, options.threads)));
    std::unordered_map<int, Parked> parked;
    std::set<std::pair<int64_t, int>> deadlines; // (deadline_us, fd) of the parked
    auto watch = [&](const Parked& p) {
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLRDHUP;
      ev.data.fd = p.fd;
      if (::epoll_ctl(epoll_fd, EPOLL_CTL_ADD, p.fd, &ev) != 0) {
        ::close(p.fd);
        return;
      }
      parked.emplace(p.fd, p);
      deadlines.emplace(p.deadline_us, p.fd);
    };
    auto unwatch = [&](int fd) {
      auto it = parked.find(fd);
      Parked p = it->second;
      parked.erase(it);
      deadlines.erase({p.deadline_us, fd});
      ::epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, nullptr);
      return p;
    };
    for (const int fd : {listen_fd, wake_fd}) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = fd;
      if (::epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        log::error("the HTTP listener failed: {}", std::strerror(errno));
        stopping.store(true);
      }
    }
    std::array<epoll_event, 64> events{};
    int64_t last_warning_us = 0;
    // Out of descriptors, the listener leaves the epoll set until then (the connections wait
    // in the backlog), while the parked ones are served as ever; 0: listening.
    int64_t resume_accepting_us = 0;
    while (!stopping.load()) {
      int timeout_ms = -1;
      int64_t next_us = deadlines.empty() ? 0 : deadlines.begin()->first;
      if (resume_accepting_us != 0 && (next_us == 0 || resume_accepting_us < next_us)) {
        next_us = resume_accepting_us;
      }
      if (next_us != 0) {
        timeout_ms =
          static_cast<int>(std::clamp<int64_t>((next_us - now_us() + 999) / 1000, 0, 60'000));
      }
      const int n = ::epoll_wait(epoll_fd, events.data(), static_cast<int>(events.size()), timeout_ms);
      if (n < 0) {
        if (errno == EINTR) continue;
        log::error("the HTTP listener failed: {}", std::strerror(errno));
        break;
      }
      if (stopping.load()) break;
      bool accepting = false;
      if (resume_accepting_us != 0 && now_us() >= resume_accepting_us) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = listen_fd;
        ::epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listen_fd, &ev);
        resume_accepting_us = 0;
        accepting = true; // the backlog may hold connections already
      }
      for (int i = 0; i < n; ++i) {
        const int fd = events[static_cast<size_t>(i)].data.fd;
        if (fd == listen_fd) {
          accepting = true;
        } else if (fd == wake_fd) {
          uint64_t count = 0;
          [[maybe_unused]] const ssize_t r = ::read(wake_fd, &count, sizeof count);
        } else if (parked.count(fd) != 0) {
          Parked p = unwatch(fd); // a request arrives (or the client closed): serve it
          pool.enqueue([this, p] { serve_connection(p); });
        }
      }
      std::vector<Parked> handed;
      {
        std::lock_guard<std::mutex> lock(park_lock);
        handed.swap(to_park);
      }
      for (const Parked& p : handed) watch(p);
      for (const int64_t now = now_us(); !deadlines.empty() && deadlines.begin()->first <= now;) {
        const Parked p = unwatch(deadlines.begin()->second); // idle for keep_alive_timeout
        ::shutdown(p.fd, SHUT_RDWR);
        ::close(p.fd);
      }
      for (int accepted = 0; accepting && accepted < 256; ++accepted) {
        sockaddr_storage peer{};
        socklen_t len = sizeof peer;
        const int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
        if (fd < 0) {
          if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            // Out of descriptors or memory: the connections wait in the backlog meanwhile.
            if (const int64_t now = now_us(); now - last_warning_us > 10'000'000) {
              log::warn("cannot accept a connection: {}; raise the open files limit (ulimit -n) "
                        "or lower server.keep_alive_timeout",
                        std::strerror(errno));
              last_warning_us = now;
            }
            // Stop listening for 20 ms rather than sleep: parked connections go on being
            // served, and the listener, readable all the while, does not spin the loop.
            ::epoll_ctl(epoll_fd, EPOLL_CTL_DEL, listen_fd, nullptr);
            resume_accepting_us = now_us() + 20'000;
          }
          break;
        }
        int yes = 1; // an answer goes out in one send(): nothing to wait for
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof yes);
        set_socket_timeout(fd, SO_RCVTIMEO,
                           std::min(options.keep_alive_timeout_ms, k_park_after_ms));
        set_socket_timeout(fd, SO_SNDTIMEO, options.write_timeout_ms);
        watch(Parked{fd, peer, std::max<int64_t>(1, options.keep_alive_max),
                     now_us() + options.keep_alive_timeout_ms * 1000});
      }
    }
    close_listener(); // new connections are refused from here on
    {
      std::lock_guard<std::mutex> lock(park_lock);
      parking_closed = true;
      for (const Parked& p : to_park) parked.emplace(p.fd, p);
      to_park.clear();
    }
    for (const auto& [fd, p] : parked) {
      ::shutdown(fd, SHUT_RDWR);
      ::close(fd);
    }
    pool.shutdown();
  }

  // Give an idle connection to run() to watch (closed instead once run() is done).
  void park(const Parked& p)
  {
    {
      std::lock_guard<std::mutex> lock(park_lock);
      if (!parking_closed) {
        to_park.push_back(p);
        const uint64_t one = 1;
        [[maybe_unused]] const ssize_t n = ::write(wake_fd, &one, sizeof one);
        return;
      }
    }
    ::shutdown(p.fd, SHUT_RDWR);
    ::close(p.fd);
  }

  // Answer the requests of a connection whose next request is arriving, up to
  // server.keep_alive_max in all, until the client closes it, it is idle for
  // k_park_after_ms (it is parked) or for server.keep_alive_timeout, or the server stops.
  void serve_connection(const Parked& from)
  {
    const int fd = from.fd;
    Connection conn{fd};
    {
      std::lock_guard<std::mutex> lock(connections_lock);
      connections.insert(&conn);
    }
    ConnectionStream strm(fd, from.peer, options.read_timeout_ms);
    bool answered_last = false; // the server ends the connection after an answer
    std::optional<Parked> parking;
    int64_t idle_deadline_us = from.deadline_us;
    for (int64_t left = from.left; left > 0; --left) {
      if (!strm.buffered()) {
        conn.state.store(k_idle);
        // Once the server stops, only a request already here is answered.
        const auto got = strm.wait_request(stopping.load());
        int idle = k_idle;
        conn.state.compare_exchange_strong(idle, k_busy); // else stop() closed it: answer, end
        if (got == ConnectionStream::Wait::nothing && !stopping.load()
            && now_us() < idle_deadline_us) {
          parking = Parked{fd, from.peer, left, idle_deadline_us};
        }
        if (got != ConnectionStream::Wait::got) break;
      }
      const bool close = left == 1 || stopping.load();
      bool closed = false;
      t_answer_closes = false;
      const bool ok = http.serve(strm, close, closed);
      const bool sent = strm.flush();
      if (!sent || !ok || closed || close || t_answer_closes) {
        answered_last = sent;
        break;
      }
      idle_deadline_us = now_us() + options.keep_alive_timeout_ms * 1000;
    }
    {
      std::lock_guard<std::mutex> lock(connections_lock);
      connections.erase(&conn);
    }
    if (parking) {
      park(*parking);
    } else if (answered_last) {
      linger_close(fd);
    } else {
      ::shutdown(fd, SHUT_RDWR);
      ::close(fd);
    }
  }

  // Closing a socket with unread bytes in its receive queue sends a reset, which can destroy
  // the answer just sent before the client reads it: requests pipelined behind a bad one, a
  // body left unread after a 413. So a connection the server ends after an answer first closes
  // its sending side, then reads and drops what still comes until the client closes too (at
  // once, for a well-behaved client), for at most a second and 4 MiB.
  static void linger_close(int fd)
  {
    ::shutdown(fd, SHUT_WR);
    const int64_t deadline = now_us() + 1'000'000;
    std::array<char, 16 * 1024> sink{};
    for (size_t drained = 0; drained < 4 * 1024 * 1024;) {
      const ssize_t n = ::recv(fd, sink.data(), sink.size(), MSG_DONTWAIT);
      if (n > 0) {
        drained += static_cast<size_t>(n);
        continue;
      }
      if (n == 0) break;
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) break;
      const int64_t left_us = deadline - now_us();
      pollfd p{fd, POLLIN, 0};
      if (left_us <= 0 || ::poll(&p, 1, static_cast<int>((left_us + 999) / 1000)) <= 0) break;
    }
    ::close(fd);
  }

  void stop()
  {
    {
      std::lock_guard<std::mutex> lock(connections_lock);
      stopping.store(true);
      for (Connection* c : connections) {
        int idle = k_idle;
        if (c->state.compare_exchange_strong(idle, k_closing)) ::shutdown(c->fd, SHUT_RD);
      }
    }
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(wake_fd, &one, sizeof one);
  }

  void configure()
  {
    http.set_payload_max_length(static_cast<size_t>(options.max_body));
    // These two only make the Keep-Alive header of the answers (in whole seconds there);
    // serve_connection keeps to them.
    http.set_keep_alive_timeout(std::max<time_t>(1, (options.keep_alive_timeout_ms + 999) / 1000));
    http.set_keep_alive_max_count(static_cast<size_t>(std::max<int64_t>(1, options.keep_alive_max)));
    http.set_pre_routing_handler([](const httplib::Request&, httplib::Response&) {
      t_request_start_us = now_us();
      return httplib::Server::HandlerResponse::Unhandled;
    });
    // cpp-httplib calls the logger once the answer is written.
    http.set_logger([this](const httplib::Request&, const httplib::Response& res) {
      t_answer_closes = res.get_header_value("Connection") == "close";
      metrics.count(res.status);
      if (t_request_start_us != 0) {
        metrics.observe(now_us() - t_request_start_us);
        t_request_start_us = 0;
      }
    });
    // Answers cpp-httplib makes by itself (413 over the Content-Length limit, 414, a request
    // line it cannot parse) get a JSON error body like ours; ours already have one.
    http.set_error_handler(httplib::Server::HandlerWithResponse(
      [](const httplib::Request&, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      switch (res.status) {
      case 413: too_large(res); break;
      case 414:
        set_error(res, 414, "uri_too_long", "the request's path and query are too long");
        res.set_header("Connection", "close");
        break;
      case 404: set_error(res, 404, "not_found", "no such endpoint"); break;
      default:
        set_error(res, res.status, "bad_request",
                  "the request is not valid HTTP/1.1; check its request line and headers");
        res.set_header("Connection", "close");
      }
      return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler(
      [](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown exception";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        log::error("{} {}: {}", req.method, req.path, what);
        set_error(res, 500, "internal", fmt::format("the server failed: {}", what));
      });

    // Every method goes to one dispatcher, so that a path known for another method is a 405
    // with Allow, not a 404. Bodies are read by the dispatcher, within server.max_body.
    auto plain = [this](const httplib::Request& req, httplib::Response& res) {
      dispatch(req, res, nullptr);
    };
    auto reading = [this](const httplib::Request& req, httplib::Response& res,
                          const httplib::ContentReader& reader) { dispatch(req, res, &reader); };
    http.Get(".*", plain);
    http.Options(".*", plain);
    http.Post(".*", plain);
    http.Post(".*", reading);
    http.Put(".*", plain);
    http.Put(".*", reading);
    http.Patch(".*", plain);
    http.Patch(".*", reading);
    http.Delete(".*", plain);
    http.Delete(".*", reading);
  }

  static bool match(std::string_view pattern, std::string_view path, std::string& id)
  {
    for (;;) {
      if (pattern.empty() || path.empty()) return pattern.empty() && path.empty();
      if (pattern[0] != '/' || path[0] != '/') return false;
      pattern.remove_prefix(1);
      path.remove_prefix(1);
      const size_t pe = pattern.find('/');
      const size_t se = path.find('/');
      std::string_view pseg = pattern.substr(0, pe);
      std::string_view sseg = path.substr(0, se);
      if (pseg == ":id") {
        if (sseg.empty()) return false;
        id = sseg;
      } else if (pseg != sseg) {
        return false;
      }
      pattern = pe == std::string_view::npos ? std::string_view() : pattern.substr(pe);
      path = se == std::string_view::npos ? std::string_view() : path.substr(se);
    }
  }

  static void too_large(httplib::Response& res, int64_t limit = 0)
  {
    set_error(res, 413, "payload_too_large",
              limit > 0 ? fmt::format("the body is larger than server.max_body ({} bytes)", limit)
                        : std::string("the body is larger than server.max_body"));
    res.set_header("Connection", "close");
  }

  // Read the body into `out`, at most server.max_body bytes. False (with the answer set) when
  // it is larger or cannot be read.
  bool read_body(const httplib::Request& req, httplib::Response& res,
                 const httplib::ContentReader* reader, std::string& out)
  {
    const auto limit = static_cast<size_t>(options.max_body);
    if (reader == nullptr) {
      out = req.body;
      return true;
    }
    bool too_big = false;
    const bool ok = (*reader)([&](const char* data, size_t n) {
      if (out.size() + n > limit) {
        too_big = true;
        return false;
      }
      out.append(data, n);
      return true;
    });
    if (too_big || res.status == 413) {
      too_large(res, options.max_body);
      return false;
    }
    if (!ok) {
      set_error(res, 400, "bad_request",
                "the body could not be read: it ended before its announced length");
      res.set_header("Connection", "close");
      return false;
    }
    return true;
  }

  void dispatch(const httplib::Request& req, httplib::Response& res,
                const httplib::ContentReader* reader)
  {
    // cpp-httplib hands every POST, PUT, PATCH and DELETE a reader; one without a length or
    // chunks has no body, and reading it would only fail.
    if (reader != nullptr && !req.has_header("Content-Length")
        && req.get_header_value("Transfer-Encoding").find("chunked") == std::string::npos) {
      reader = nullptr;
    }
    const std::string method = req.method == "HEAD" ? "GET" : req.method;
    const Route* route = nullptr;
    std::string id;
    std::string allow;
    for (const auto& r : routes) {
      std::string rid;
      if (!match(r.pattern, req.path, rid)) continue;
      if (!allow.empty()) allow += ", ";
      allow += r.method;
      if (method == r.method) {
        route = &r;
        id = std::move(rid);
      }
    }
    if (route == nullptr) {
      if (allow.empty()) {
        set_error(res, 404, "not_found",
                  fmt::format("no endpoint {}; see `man acmo` for the API's endpoints", req.path));
      } else if (method == "OPTIONS") {
        res.status = 204;
        res.set_header("Allow", allow + ", OPTIONS");
      } else {
        set_error(res, 405, "method_not_allowed",
                  fmt::format("{} does not take {}; it takes {}", req.path, req.method, allow));
        res.set_header("Allow", allow);
      }
      drain(res, reader);
      return;
    }

    std::string client;
    if (!authorize(*route, req, res, client)) {
      drain(res, reader);
      return;
    }
    if (route->access != Access::open && limiter.enabled()) {
      if (int64_t wait = limiter.take(client); wait > 0) {
        set_error(res, 429, "rate_limited",
                  fmt::format("too many requests: the limit is {} a second (server.rate_limit); "
                              "retry in {} s",
                              options.rate_limit, wait));
        res.set_header("Retry-After", std::to_string(wait));
        drain(res, reader);
        return;
      }
    }

    Context ctx{req, res, std::move(id), nullptr};
    if (route->takes_body) {
      std::string text;
      if (!read_body(req, res, reader, text)) return;
      if (text.size() > static_cast<size_t>(options.max_body)) return too_large(res, options.max_body);
      const std::string type = req.get_header_value("Content-Type");
      if (!is_json_media_type(type)) {
        set_error(res, 415, "unsupported_media_type",
                  type.empty() ? "send the body as JSON with Content-Type: application/json"
                               : fmt::format("the body must be JSON (Content-Type: "
                                             "application/json), not {}",
                                             type));
        return;
      }
      auto parsed = parse_json_input(text, "the body");
      if (!parsed) return set_core_error(res, parsed.error());
      if (!parsed->is_object()) {
        return set_error(res, 400, "invalid_input",
                         fmt::format("the body must be a JSON object, not {}",
                                     parsed->type_name()),
                         json{{"field", "body"}});
      }
      ctx.body = std::move(*parsed);
    } else {
      drain(res, reader);
    }
    (this->*(route->handler))(ctx);
  }

  // Read and drop a body nobody needs, so that the connection stays usable.
  void drain(httplib::Response& res, const httplib::ContentReader* reader)
  {
    if (reader == nullptr) return;
    size_t seen = 0;
    const auto limit = static_cast<size_t>(options.max_body);
    const int status = res.status; // a failed read sets one of its own
    const bool ok = (*reader)([&](const char*, size_t n) {
      seen += n;
      return seen <= limit;
    });
    res.status = status;
    if (!ok) res.set_header("Connection", "close");
  }

  bool authorize(const Route& route, const httplib::Request& req, httplib::Response& res,
                 std::string& client)
  {
    std::string token;
    const std::string header = req.get_header_value("Authorization");
    if (header.size() > 7 && (header.rfind("Bearer ", 0) == 0 || header.rfind("bearer ", 0) == 0)) {
      token = header.substr(7);
    }
    client = token.empty() ? req.remote_addr : "token:" + token;
    if (route.access == Access::open) return true;
    const bool is_admin = !options.admin_tokens.empty() && token_in(token, options.admin_tokens);
    const bool is_api = token_in(token, options.api_tokens);
    const bool admin_checked = route.access == Access::admin && !options.admin_tokens.empty();
    if (admin_checked) {
      if (is_admin) return true;
      if (token.empty() || !is_api) {
        unauthorized(res, token.empty(), "an admin token (server.admin_tokens)");
      } else {
        set_error(res, 403, "forbidden",
                  fmt::format("{} {} needs an admin token (server.admin_tokens); this token is "
                              "an API token",
                              req.method, req.path));
      }
      return false;
    }
    if (options.api_tokens.empty() || is_api || is_admin) return true;
    unauthorized(res, token.empty(), "a token (server.api_tokens)");
    return false;
  }

  static void unauthorized(httplib::Response& res, bool missing, std::string_view what)
  {
    set_error(res, 401, "unauthorized",
              missing ? fmt::format("send {} as Authorization: Bearer TOKEN", what)
                      : fmt::format("the bearer token is not {}", what));
    res.set_header("WWW-Authenticate", "Bearer");
  }

  // Run `fn` with one of the read stores, which no other request uses meanwhile.
  template<typename Fn> auto with_store(Fn&& fn)
  {
    const size_t n = stores.size();
    const size_t start = next_store.fetch_add(1, std::memory_order_relaxed) % n;
    for (size_t i = 0; i < n; ++i) {
      const size_t k = (start + i) % n;
      std::unique_lock lock(*store_locks[k], std::try_to_lock);
      if (lock.owns_lock()) return fn(*stores[k]);
    }
    std::lock_guard lock(*store_locks[start]);
    return fn(*stores[start]);
  }

  static void send_json(httplib::Response& res, int status, const json& doc)
  {
    res.status = status;
    res.set_content(doc.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
  }

  // --- the orders API -------------------------------------------------------------------------

  // Queue `event` (its data already valid) and answer 202.
  void enqueue(Context& ctx, OrderEvent event)
  {
    const std::string key = ctx.req.get_header_value("Idempotency-Key");
    if (!key.empty()) {
      if (auto ok = limits::check_id(key, "Idempotency-Key"); !ok) {
        return set_core_error(ctx.res, ok.error());
      }
      event.dedup_id = key;
    }
    complete_event(event, options.group_by);
    auto result = parts.queue->send(to_send_request(event));
    if (!result) {
      if (result.error().code != Errc::invalid_input) {
        log::warn("POST {}: the queue refused an event: {}", ctx.req.path, result.error().message);
      }
      return set_core_error(ctx.res, as_body_error(result.error()));
    }
    ctx.res.set_header("Location", "/api/orders/" + event.order_id);
    ctx.res.status = 202;
    ctx.res.set_content(accepted_json(*result, event), "application/json");
  }

  void create_order(Context& ctx)
  {
    if (auto ok = validate_event_data(EventType::create, ctx.body); !ok) {
      return set_core_error(ctx.res, as_body_error(ok.error()));
    }
    OrderEvent event;
    event.type = EventType::create;
    event.data = std::move(ctx.body);
    enqueue(ctx, std::move(event));
  }

  bool check_id(Context& ctx)
  {
    if (auto ok = check_order_id(ctx.id); !ok) {
      set_error(ctx.res, 400, "invalid_input",
                fmt::format("the order id in the path {}", ok.error().message.substr(9)),
                json{{"field", "orderId"}});
      return false;
    }
    return true;
  }

  void update_order(Context& ctx)
  {
    if (!check_id(ctx)) return;
    // PUT takes {"status"}; any other field is not something an UPDATE can change.
    for (const auto& [key, value] : ctx.body.items()) {
      if (key != "status") {
        return set_error(ctx.res, 400, "invalid_input",
                         fmt::format("{}: an order's status is the only field that can change; "
                                     "send {{\"status\": \"...\"}}",
                                     key),
                         json{{"field", key}});
      }
    }
    if (auto ok = validate_event_data(EventType::update, ctx.body); !ok) {
      return set_core_error(ctx.res, as_body_error(ok.error()));
    }
    OrderEvent event;
    event.type = EventType::update;
    event.order_id = ctx.id;
    event.data = std::move(ctx.body);
    enqueue(ctx, std::move(event));
  }

  void delete_order(Context& ctx)
  {
    if (!check_id(ctx)) return;
    OrderEvent event;
    event.type = EventType::remove;
    event.order_id = ctx.id;
    enqueue(ctx, std::move(event));
  }

  void get_order(Context& ctx)
  {
    if (!check_id(ctx)) return;
    auto text = with_store([&](OrderStore& store) {
      return CachedOrders(store, parts.cache).get_json(ctx.id);
    });
    if (!text) {
      if (text.error().code == Errc::not_found) {
        return set_error(ctx.res, 404, "not_found",
                         fmt::format("no order {} (a new order shows once the handler has "
                                     "applied its CREATE)",
                                     ctx.id),
                         json{{"orderId", ctx.id}});
      }
      return set_core_error(ctx.res, text.error());
    }
    ctx.res.status = 200;
    ctx.res.set_content(std::move(*text), "application/json");
  }

  // An integer query parameter within [min, max], or `fallback` when absent.
  static Expected<int64_t> int_param(const httplib::Request& req, const char* name, int64_t fallback,
                                     int64_t min, int64_t max)
  {
    if (!req.has_param(name)) return fallback;
    const std::string text = req.get_param_value(name);
    int64_t value = 0;
    const char* end = text.data() + text.size();
    auto [ptr, ec] = std::from_chars(text.data(), end, value);
    if (text.empty() || ec != std::errc() || ptr != end || value < min || value > max) {
      return make_error(Errc::invalid_input,
                        fmt::format("{} must be a whole number from {} to {}, not \"{}\"", name,
                                    min, max, text),
                        name);
    }
    return value;
  }

  void list_orders(Context& ctx)
  {
    const std::string status = ctx.req.get_param_value("status");
    if (!status.empty() && !is_order_status(status)) {
      return set_error(ctx.res, 400, "invalid_input",
                       fmt::format("status \"{}\" is not an order status; use pending, "
                                   "processing, shipped, delivered or cancelled",
                                   status),
                       json{{"field", "status"}});
    }
    auto limit = int_param(ctx.req, "limit", 50, 1, k_max_list_limit);
    if (!limit) return set_core_error(ctx.res, limit.error());
    auto offset = int_param(ctx.req, "offset", 0, 0, INT64_MAX / 2);
    if (!offset) return set_core_error(ctx.res, offset.error());
    auto text = with_store([&](OrderStore& store) {
      return CachedOrders(store, parts.cache).list_json(status, *limit, *offset);
    });
    if (!text) return set_core_error(ctx.res, text.error());
    ctx.res.status = 200;
    ctx.res.set_content(std::move(*text), "application/json");
  }

  void order_events(Context& ctx)
  {
    if (!check_id(ctx)) return;
    auto events = with_store([&](OrderStore& store) { return store.events(ctx.id); });
    if (!events && events.error().code != Errc::not_found) {
      return set_core_error(ctx.res, events.error());
    }
    if (!events || events->empty()) {
      return set_error(ctx.res, 404, "not_found",
                       fmt::format("no order {}: no event of it was applied", ctx.id),
                       json{{"orderId", ctx.id}});
    }
    json list = json::array();
    for (const auto& e : *events) {
      list.push_back({{"messageId", e.message_id},
                      {"sequenceNumber", format_sequence(e.seq)},
                      {"type", e.type},
                      {"data", e.data},
                      {"appliedAt", format_timestamp(e.applied_at_ms)}});
    }
    send_json(ctx.res, 200, {{"events", std::move(list)}});
  }

  // --- monitoring ------------------------------------------------------------------------------

  void sqs_stats(Context& ctx)
  {
    auto stats = parts.queue->stats();
    if (!stats) return set_core_error(ctx.res, stats.error());
    json doc = queue_stats_json(*stats);
    doc["dlqName"] = stats->dlq_name;
    doc["deadLetteredTotal"] = stats->dead_lettered_total;
    doc["redriven"] = stats->redriven;
    doc["purged"] = stats->purged;
    send_json(ctx.res, 200, doc);
  }

  void sqs_purge(Context& ctx)
  {
    auto purged = parts.queue->purge(ctx.req.get_param_value("queue") == "dlq");
    if (!purged) return set_core_error(ctx.res, purged.error());
    log::info("purged {} messages of the queue at the request of {}", *purged,
              ctx.req.remote_addr);
    send_json(ctx.res, 200, {{"purged", *purged}});
  }

  void dlq_list(Context& ctx)
  {
    auto limit = int_param(ctx.req, "limit", 100, 1, k_max_list_limit);
    if (!limit) return set_core_error(ctx.res, limit.error());
    auto offset = int_param(ctx.req, "offset", 0, 0, INT64_MAX / 2);
    if (!offset) return set_core_error(ctx.res, offset.error());
    auto messages = parts.queue->dlq_list(*limit, *offset);
    if (!messages) return set_core_error(ctx.res, messages.error());
    json list = json::array();
    for (const auto& m : *messages) {
      auto parsed = parse_json_input(m.body, "the body");
      json body = parsed ? std::move(*parsed) : json(m.body);
      list.push_back({{"messageId", m.message_id},
                      {"sequenceNumber", format_sequence(m.seq)},
                      {"groupId", m.group_id},
                      {"deduplicationId", m.dedup_id},
                      {"body", std::move(body)},
                      {"receiveCount", m.receive_count},
                      {"reason", m.dead_reason},
                      {"lastError", m.last_error},
                      {"sentAt", format_timestamp(m.sent_at_ms)},
                      {"deadLetteredAt", format_timestamp(m.dead_at_ms)}});
    }
    send_json(ctx.res, 200, {{"messages", std::move(list)}});
  }

  void dlq_redrive(Context& ctx)
  {
    // ?id=MESSAGE_ID (repeatable) names the messages to move; none moves them all.
    std::vector<std::string> ids;
    for (size_t i = 0; i < ctx.req.get_param_value_count("id"); ++i) {
      ids.push_back(ctx.req.get_param_value("id", i));
    }
    auto moved = parts.queue->redrive(ids);
    if (!moved) return set_core_error(ctx.res, moved.error());
    send_json(ctx.res, 200, {{"redriven", *moved}});
  }

  json in_process_handler_json()
  {
    if (parts.handler == nullptr) return nullptr;
    const HandlerStats s = parts.handler->stats();
    return {{"running", true},
            {"since", format_timestamp(parts.handler_started_ms)},
            {"processed", s.processed},
            {"deadLettered", s.dead_lettered},
            {"retried", s.retried},
            {"batches", s.batches},
            {"latencyP50Ms", static_cast<double>(s.latency_p50_us) / 1000.0},
            {"latencyP99Ms", static_cast<double>(s.latency_p99_us) / 1000.0},
            {"lastError", s.last_error}};
  }

  void handler_status(Context& ctx)
  {
    const int64_t now = SystemClock::instance().now_ms();
    auto handlers = list_handlers(parts.db_path, now);
    if (!handlers) return set_core_error(ctx.res, handlers.error());
    json doc = handlers_json(*handlers, now);
    doc["inProcess"] = in_process_handler_json();
    send_json(ctx.res, 200, doc);
  }

  void handler_stats(Context& ctx)
  {
    const int64_t now = SystemClock::instance().now_ms();
    auto report = with_store([&](OrderStore& store) {
      return read_stats(*parts.queue, parts.db_path, store, options.store_backend, parts.cache, now);
    });
    if (!report) return set_core_error(ctx.res, report.error());
    send_json(ctx.res, 200, stats_json(*report));
  }

  CacheStats cache_figures()
  {
    if (parts.cache != nullptr) return parts.cache->stats();
    CacheStats none;
    none.backend = "none";
    return none;
  }

  void cache_stats(Context& ctx) { send_json(ctx.res, 200, cache_stats_json(cache_figures())); }

  void cache_keys(Context& ctx)
  {
    std::vector<std::string> keys;
    if (parts.cache != nullptr) keys = parts.cache->keys();
    std::sort(keys.begin(), keys.end());
    send_json(ctx.res, 200, {{"keys", keys}, {"count", keys.size()}});
  }

  void cache_clear(Context& ctx)
  {
    const int64_t cleared = parts.cache != nullptr ? parts.cache->clear() : 0;
    send_json(ctx.res, 200, {{"cleared", cleared}});
  }

  void health(Context& ctx)
  {
    json checks = json::object();
    std::vector<std::string> failing;
    auto record = [&](const char* what, const Expected<void>& ok) {
      if (ok) {
        checks[what] = {{"ok", true}};
      } else {
        checks[what] = {{"ok", false}, {"error", ok.error().message}};
        failing.emplace_back(what);
      }
    };
    // The queue: a read of its database (the DLQ's head, an index lookup),
    // and whether it takes writes (a full disk fails every send while reads still work).
    auto dlq = parts.queue->dlq_list(1, 0);
    record("queue", dlq ? parts.queue->check_writable() : Expected<void>(Unexpected(dlq.error())));
    // The store: an order that cannot exist is not found when the store answers.
    auto probe = with_store([](OrderStore& store) { return store.get("health-probe"); });
    record("store", probe || probe.error().code == Errc::not_found
                      ? Expected<void>()
                      : Expected<void>(Unexpected(probe.error())));
    // The cache counts its failures rather than reporting them: one more after a read is one.
    if (parts.cache != nullptr) {
      const int64_t before = parts.cache->stats().errors;
      parts.cache->get("health-probe");
      record("cache", parts.cache->stats().errors == before
                        ? Expected<void>()
                        : Expected<void>(make_error(Errc::unavailable,
                                                    "the cache did not answer a read")));
    } else {
      checks["cache"] = {{"ok", true}, {"backend", "none"}};
    }
    json doc = {{"status", failing.empty() ? "ok" : "unavailable"}, {"checks", std::move(checks)}};
    if (!failing.empty()) {
      std::string names;
      for (const auto& f : failing) names += (names.empty() ? "" : ", ") + f;
      doc["failing"] = failing;
      doc["message"] = fmt::format("not answering: {}", names);
      ctx.res.set_header("Retry-After", "1");
    }
    send_json(ctx.res, failing.empty() ? 200 : 503, doc);
  }

  void prometheus(Context& ctx)
  {
    std::string out;
    out.reserve(8192);
    auto metric = [&out](std::string_view name, std::string_view type, std::string_view help,
                         auto value, std::string_view labels = {}) {
      if (!help.empty()) out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
      out += fmt::format("{}{} {}\n", name, labels, value);
    };
    if (auto s = parts.queue->stats()) {
      out += "# HELP acmo_queue_messages Messages in the queue, by state.\n"
             "# TYPE acmo_queue_messages gauge\n";
      const std::string q = s->name;
      out += fmt::format("acmo_queue_messages{{queue=\"{}\",state=\"visible\"}} {}\n", q, s->visible);
      out += fmt::format("acmo_queue_messages{{queue=\"{}\",state=\"in_flight\"}} {}\n", q, s->in_flight);
      out += fmt::format("acmo_queue_messages{{queue=\"{}\",state=\"delayed\"}} {}\n", q, s->delayed);
      out += fmt::format("acmo_queue_messages{{queue=\"{}\",state=\"dead_lettered\"}} {}\n", q,
                         s->dead_lettered);
      metric("acmo_queue_dedup_entries", "gauge", "Deduplication ids remembered.", s->dedup_entries);
      metric("acmo_queue_oldest_message_age_seconds", "gauge", "Age of the oldest message.",
             static_cast<double>(s->oldest_age_ms) / 1000.0);
      metric("acmo_queue_sent_total", "counter", "Messages accepted.", s->sent);
      metric("acmo_queue_duplicates_total", "counter", "Sends caught as duplicates.", s->duplicates);
      metric("acmo_queue_received_total", "counter", "Messages delivered to receivers.", s->received);
      metric("acmo_queue_deleted_total", "counter", "Messages deleted after handling.", s->deleted);
      metric("acmo_queue_retried_total", "counter", "Messages released for a retry.", s->retried);
      metric("acmo_queue_expired_total", "counter", "Messages dropped by retention.", s->expired);
      metric("acmo_queue_dead_lettered_total", "counter", "Messages moved to the DLQ.",
             s->dead_lettered_total);
      metric("acmo_queue_up", "gauge", "Whether the queue's database answered.", 1);
    } else {
      metric("acmo_queue_up", "gauge", "Whether the queue's database answered.", 0);
    }
    const CommitStats commits = parts.queue->commit_stats();
    metric("acmo_queue_transactions_total", "counter",
           "Write transactions of this process (group commit).", commits.transactions);
    metric("acmo_queue_requests_total", "counter", "Write requests carried by them.",
           commits.requests);
    if (parts.handler != nullptr) {
      const HandlerStats h = parts.handler->stats();
      metric("acmo_handler_processed_total", "counter", "Events applied by the in-process handler.",
             h.processed);
      metric("acmo_handler_dead_lettered_total", "counter", "Events it dead-lettered.",
             h.dead_lettered);
      metric("acmo_handler_retried_total", "counter", "Events it released for a retry.", h.retried);
      metric("acmo_handler_batches_total", "counter", "Batches it settled.", h.batches);
      out += "# HELP acmo_handler_batch_latency_seconds Time to apply and settle a batch.\n"
             "# TYPE acmo_handler_batch_latency_seconds summary\n";
      out += fmt::format("acmo_handler_batch_latency_seconds{{quantile=\"0.5\"}} {}\n",
                         static_cast<double>(h.latency_p50_us) / 1e6);
      out += fmt::format("acmo_handler_batch_latency_seconds{{quantile=\"0.99\"}} {}\n",
                         static_cast<double>(h.latency_p99_us) / 1e6);
    }
    metric("acmo_handler_in_process", "gauge", "Whether this server runs a handler.",
           parts.handler != nullptr ? 1 : 0);
    const CacheStats c = cache_figures();
    const std::string backend = fmt::format("{{backend=\"{}\"}}", c.backend);
    metric("acmo_cache_hits_total", "counter", "Cache reads that hit.", c.hits, backend);
    metric("acmo_cache_misses_total", "counter", "Cache reads that missed.", c.misses, backend);
    metric("acmo_cache_errors_total", "counter", "Cache operations that failed.", c.errors, backend);
    metric("acmo_cache_keys", "gauge", "Keys in the cache.", c.keys, backend);
    metrics.write(out);
    ctx.res.status = 200;
    ctx.res.set_content(std::move(out), "text/plain; version=0.0.4; charset=utf-8");
  }
};

HttpServer::HttpServer(HttpServerOptions options, HttpServerParts parts)
  : m_impl(std::make_unique<Impl>(std::move(options), std::move(parts)))
{
}

HttpServer::~HttpServer() { stop(); }

Expected<void> HttpServer::bind()
{
  auto& impl = *m_impl;
  // A few stores serve the reads that miss the cache; more would only wait on the database.
  const int n = std::clamp(impl.options.threads / 4, 1, 8);
  for (int i = 0; i < n; ++i) {
    auto store = impl.parts.open_store();
    if (!store) return Unexpected(store.error());
    impl.stores.push_back(std::move(*store));
    impl.store_locks.push_back(std::make_unique<std::mutex>());
  }
  // httplib's default sets SO_REUSEPORT, which lets a second server bind the same port and
  // share its connections unnoticed; only SO_REUSEADDR (a restart right after a stop).
  impl.http.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  const std::string& host = impl.options.host;
  errno = 0; // httplib reports a failed bind as false; the errno of bind() says why
  if (impl.options.port == 0) {
    impl.bound_port = impl.http.bind_to_any_port(host);
  } else if (impl.http.bind_to_port(host, impl.options.port)) {
    impl.bound_port = impl.options.port;
  } else {
    impl.bound_port = -1;
  }
  if (impl.bound_port <= 0) {
    const int error = errno;
    const std::string where = fmt::format("{}:{}", host, impl.options.port);
    const char* pick = "pick another with --listen HOST:PORT or server.listen";
    if (error == EADDRINUSE) {
      return make_error(Errc::unavailable,
                        fmt::format("cannot listen on {}: another process is listening there "
                                    "(`ss -ltnp 'sport = :{}'` shows which); stop it, or {}",
                                    where, impl.options.port, pick),
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
                                  where, host, pick),
                      "server.listen");
  }
  ::listen(impl.http.socket(), k_listen_backlog);
  return {};
}

int HttpServer::port() const { return m_impl->bound_port; }

void HttpServer::run() { m_impl->run(); }

void HttpServer::stop() { m_impl->stop(); }

} // namespace acmo::daemon
