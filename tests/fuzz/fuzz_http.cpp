// libFuzzer target: acmo serve's request path, end to end. One HttpServer runs in this process
// (as `acmo serve --no-handler` would: a queue in a temporary data dir, the embedded store, the
// memory cache, API and admin tokens set) on a loopback port the kernel picks; every input is
// written as raw bytes to a fresh connection, which is then half-closed, and the answer read
// until the server closes it. Besides not crashing (ASan, UBSan, in the server's threads too),
// the server must still answer GET /health/ready with 200 every 256 inputs: it serves, and its
// queue takes events. (Not /health: with no handler here, the fuzzed events that were queued
// make it 503 "stalled", as it should be.)
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/cache/cache.hpp"
#include "core/config/backends.hpp"
#include "core/config/config.hpp"
#include "core/queue/sqlite/sqlite_queue.hpp"
#include "daemon/http_server.hpp"

namespace {

struct Served {
  std::string dir;
  acmo::Config config;
  std::unique_ptr<acmo::Queue> queue;
  std::unique_ptr<acmo::Cache> cache;
  std::unique_ptr<acmo::daemon::HttpServer> server;
  std::thread thread;
  int port = 0;
};

// Started once, and never stopped: the process ends when libFuzzer is done (it is kept
// reachable, so neither a destructor nor LeakSanitizer has anything to say about it).
Served& served()
{
  static Served* s = [] {
    std::signal(SIGPIPE, SIG_IGN);
    auto* x = new Served;
    // In $TMPDIR, which scripts/test-fuzz.sh points at a directory of the run's own.
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp")
                        + "/acmo-fuzz-http-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) std::abort();
    x->dir = templ;
    acmo::ConfigSources sources;
    sources.use_environment = false;
    auto config = acmo::load_config(sources);
    if (!config) std::abort();
    x->config = *config;
    acmo::QueueOptions qo = acmo::queue_options_from(x->config);
    qo.durability_full = false; // fsyncs would only slow the fuzzer down
    const std::string db = x->dir + "/acmo.db";
    auto queue = acmo::SqliteQueue::open(db, qo);
    if (!queue) std::abort();
    x->queue = std::move(*queue);
    x->cache = acmo::open_cache(x->config);

    acmo::daemon::HttpServerOptions o;
    o.port = 0;
    o.threads = 4;
    o.read_timeout_ms = 200;
    o.write_timeout_ms = 200;
    o.keep_alive_timeout_ms = 200;
    o.api_tokens = {"fuzz-api"};
    o.admin_tokens = {"fuzz-admin"};
    acmo::daemon::HttpServerParts parts;
    parts.queue = x->queue.get();
    parts.db_path = db;
    const acmo::Config* cfg = &x->config;
    parts.open_store = [cfg, db] { return acmo::open_order_store(*cfg, db); };
    parts.cache = x->cache.get();
    x->server = std::make_unique<acmo::daemon::HttpServer>(o, std::move(parts));
    if (!x->server->bind()) std::abort();
    x->port = x->server->port();
    x->thread = std::thread([x] { x->server->run(); });
    return x;
  }();
  return *s;
}

// Write `size` bytes to a fresh connection, half-close it, read the answer until the server
// closes it (or 2 s pass). What was read, or "" when the server could not be reached.
std::string exchange(const uint8_t* data, size_t size)
{
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) std::abort();
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(served().port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string answer;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return answer;
  }
  size_t sent = 0;
  while (sent < size) {
    const ssize_t n = ::send(fd, data + sent, size - sent, MSG_NOSIGNAL);
    if (n <= 0) break; // the server may close early (a bad request line): not a failure
    sent += static_cast<size_t>(n);
  }
  ::shutdown(fd, SHUT_WR);
  char buf[4096];
  for (int waited = 0; waited < 2000;) {
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, 100);
    if (r == 0) {
      waited += 100;
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    const ssize_t n = r > 0 ? ::recv(fd, buf, sizeof buf, 0) : -1;
    if (n <= 0) break;
    answer.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return answer;
}

void expect_healthy()
{
  static const char k_health[] =
    "GET /health/ready HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n";
  const std::string answer =
    exchange(reinterpret_cast<const uint8_t*>(k_health), sizeof k_health - 1);
  if (answer.rfind("HTTP/1.1 200", 0) != 0) { // the server stopped answering
    std::fprintf(stderr, "GET /health/ready answered: [%s]\n", answer.substr(0, 300).c_str());
    __builtin_trap();
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
  static unsigned long runs = 0;
  (void)exchange(data, size);
  if (++runs % 256 == 0) expect_healthy();
  return 0;
}
