// Helpers for the tests that need a real Redis: the shared test server's URL (or a skip), a
// key prefix of each test's own, a plain hiredis client to look behind the cache's back, and
// a redis-server of the test's own for the tests that stop it.
#pragma once

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <hiredis/hiredis.h>

#include "core/cache/redis_cache.hpp"
#include "unit/service_url.hpp"
#include "unit/temp_dir.hpp"

namespace acmo::test {

// The test server's URL (ACMO_TEST_REDIS_URL).
inline std::optional<std::string> test_redis_url()
{
  return service_url("ACMO_TEST_REDIS_URL");
}

// A prefix no other test, process or agent uses: the test server is shared.
inline std::string unique_prefix()
{
  static std::atomic<int> n{0};
  return "acmo-test-" + std::to_string(::getpid()) + "-" + std::to_string(++n) + ":";
}

// A free TCP port on loopback (nothing listens on it once this returns).
inline int free_port()
{
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    FAIL("cannot find a free port");
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

// A plain client; every command must succeed at the connection level.
class RawRedis
{
public:
  explicit RawRedis(const std::string& url)
  {
    auto a = parse_redis_url(url);
    REQUIRE(a);
    m_c.reset(a->unix_path.empty() ? redisConnect(a->host.c_str(), a->port)
                                   : redisConnectUnix(a->unix_path.c_str()));
    if (!m_c || m_c->err != 0) FAIL("cannot connect to " << url);
    if (a->db != 0) cmd({"SELECT", std::to_string(a->db)});
  }

  struct Free {
    void operator()(redisReply* r) const { freeReplyObject(r); }
    void operator()(redisContext* c) const { redisFree(c); }
  };
  using Reply = std::unique_ptr<redisReply, Free>;

  Reply cmd(const std::vector<std::string>& args)
  {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    Reply r(static_cast<redisReply*>(
      redisCommandArgv(m_c.get(), static_cast<int>(argv.size()), argv.data(), lens.data())));
    if (!r) FAIL("Redis connection failed: " << m_c->errstr);
    return r;
  }
  std::optional<std::string> get(const std::string& key)
  {
    auto r = cmd({"GET", key});
    if (r->type != REDIS_REPLY_STRING) return std::nullopt;
    return std::string(r->str, r->len);
  }
  long long integer(const std::vector<std::string>& args) { return cmd(args)->integer; }

  // Every key under `prefix` (SCAN), and deleting them.
  std::vector<std::string> keys_under(const std::string& prefix)
  {
    std::vector<std::string> out;
    std::string cursor = "0";
    do {
      auto r = cmd({"SCAN", cursor, "MATCH", prefix + "*", "COUNT", "1000"});
      REQUIRE(r->type == REDIS_REPLY_ARRAY);
      cursor.assign(r->element[0]->str, r->element[0]->len);
      for (size_t i = 0; i < r->element[1]->elements; ++i) {
        out.emplace_back(r->element[1]->element[i]->str, r->element[1]->element[i]->len);
      }
    } while (cursor != "0");
    return out;
  }
  void delete_under(const std::string& prefix)
  {
    for (const auto& k : keys_under(prefix)) cmd({"DEL", k});
  }

private:
  std::unique_ptr<redisContext, Free> m_c;
};

// Deletes a test's keys when it ends, however it ends.
class PrefixCleanup
{
public:
  PrefixCleanup(std::string url, std::string prefix)
    : m_url(std::move(url)), m_prefix(std::move(prefix))
  {
  }
  ~PrefixCleanup()
  {
    try {
      RawRedis(m_url).delete_under(m_prefix);
    } catch (...) { // a leftover key on the test server is the lesser harm
    }
  }

private:
  std::string m_url, m_prefix;
};

// A redis-server of the test's own, on loopback and a free port, with no persistence; stop()
// and start() it to make an outage.
class OwnRedisServer
{
public:
  OwnRedisServer() : m_port(free_port()) { start(); }
  ~OwnRedisServer() { stop(); }
  OwnRedisServer(const OwnRedisServer&) = delete;
  OwnRedisServer& operator=(const OwnRedisServer&) = delete;

  std::string url() const { return "redis://127.0.0.1:" + std::to_string(m_port); }

  void start()
  {
    const std::string port = std::to_string(m_port);
    const std::string dir = m_dir.path().string();
    m_pid = ::fork();
    if (m_pid == 0) {
      ::execlp("redis-server", "redis-server", "--port", port.c_str(), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", dir.c_str(), "--logfile",
               "redis.log", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    REQUIRE(m_pid > 0);
    for (int i = 0; i < 100; ++i) {
      redisContext* c = redisConnect("127.0.0.1", m_port);
      const bool up = c != nullptr && c->err == 0;
      if (c != nullptr) redisFree(c);
      if (up) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL("redis-server did not start on port " << m_port);
  }

  void stop()
  {
    if (m_pid <= 0) return;
    ::kill(m_pid, SIGKILL);
    ::waitpid(m_pid, nullptr, 0);
    m_pid = -1;
  }

private:
  TempDir m_dir;
  int m_port;
  pid_t m_pid = -1;
};

} // namespace acmo::test
