// The connection layer of acmo serve: it accepts connections, reads requests until each has
// arrived whole, hands whole requests to a RequestHandler (the API), writes the answers, and
// keeps to the timeouts. It knows nothing of orders or queues.
//
// A connection holds a thread only while one of its requests is being answered. Every thread
// of the pool waits in epoll_wait on one shared epoll set, in which every connection is armed
// for one event at a time (EPOLLONESHOT): the thread that gets the event reads what has come
// (without waiting), answers the requests that are whole, writes the answers as far as the
// socket takes them, and arms the connection again. So a client that sends its request a byte
// a second, sends half a body and stops, or never reads its answers, costs a descriptor and a
// buffer, not a thread; server.threads bounds the requests answered at once, not the clients.
// A timer thread closes connections that go past their deadlines:
//   - idle between requests: server.keep_alive_timeout;
//   - a request that has begun to arrive: server.read_timeout for all of it (408);
//   - an answer the client does not take: server.write_timeout.
// Limits: at most max_connections_per_client connections from one address (the next is
// answered 429 and closed), and at most 256 × max_body bytes of partial requests held in
// all (beyond that, the connection that would pass it is answered 503 and closed).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "core/util/error.hpp"
#include "daemon/http_message.hpp"

namespace acmo::daemon {

struct ConnectionOptions {
  std::string host = "127.0.0.1";
  int port = 3000; // 0: any free port
  int threads = 64;
  int64_t max_body = 1'048'576;
  int64_t read_timeout_ms = 5'000;
  int64_t write_timeout_ms = 5'000;
  int64_t keep_alive_timeout_ms = 5'000;
  int64_t keep_alive_max = 1'000;
  int64_t max_connections_per_client = 1'024;
};

// What the connection layer calls; safe to call from many threads at once.
class RequestHandler
{
public:
  virtual ~RequestHandler() = default;
  // A request whose head has arrived asks for "100 Continue" before it sends its body: its
  // final answer if it is to be refused anyway (no such route, no token, over a limit), so
  // that the client does not send the body for nothing; nothing otherwise. The handler counts
  // such an answer in its figures itself, as it does handle's.
  virtual std::optional<Response> refuse_early(const Request& head) = 0;
  // Answer a whole request.
  virtual Response handle(Request& request) = 0;
  // An answer the connection layer made itself (a request it could not parse, one that took
  // too long to arrive, a client over its connection limit), for the figures.
  virtual void answered_by_connections(const Response& response) = 0;
};

class Connections
{
public:
  Connections(ConnectionOptions options, RequestHandler& handler);
  ~Connections();
  Connections(const Connections&) = delete;
  Connections& operator=(const Connections&) = delete;

  // Bind and listen. Errc::unavailable when another process listens there, Errc::conflict when
  // the port needs a privilege, Errc::invalid_input when the host is not this machine's.
  Expected<void> bind();
  // The port bound (the one chosen, with port 0).
  int port() const;
  // Serve until stop(); then the requests being answered are finished, every connection is
  // closed, and it returns.
  void run();
  // Safe from any thread, and more than once.
  void stop();

  // An error answer in acmo's JSON: {"error": {"code", "message", "details": null}}.
  static Response error(int status, std::string_view code, std::string_view message);

private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

} // namespace acmo::daemon
