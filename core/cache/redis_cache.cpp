#include "core/cache/redis_cache.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>

#include <fmt/core.h>
#include <hiredis/hiredis.h>

namespace acmo {

namespace {

constexpr int64_t k_flush_interval_ms = 1000;   // how often a process adds its counts to Redis
constexpr size_t k_max_pending_keys = 10'000;   // beyond this, recovery clears the prefix
constexpr size_t k_keys_per_command = 1000;     // DEL and SCAN COUNT
constexpr std::string_view k_count_fields[] = {"hits", "misses", "errors"};

// Set while a thread sends the pending invalidations, so that its commands do not wait for
// themselves.
thread_local bool t_replaying = false;

int64_t steady_ms()
{
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

std::optional<int64_t> to_int(std::string_view text)
{
  int64_t value = 0;
  const auto* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end || text.empty()) return std::nullopt;
  return value;
}

// SCAN's MATCH is a glob: a prefix with *, ?, [ or \ in it must match only itself.
std::string escape_glob(std::string_view text)
{
  std::string out;
  for (char c : text) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

// hiredis writes with write(2): a connection the server closed raises SIGPIPE, which would
// kill the process. As libpq does, block it in this thread for the round trip, and take a
// SIGPIPE it raised before unblocking. Only a failed write raises one, so the success path
// costs two sigmask calls.
class SigpipeGuard
{
public:
  SigpipeGuard()
  {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, &m_old);
  }
  ~SigpipeGuard()
  {
    if (m_failed && sigismember(&m_old, SIGPIPE) == 0) {
      sigset_t pending;
      sigpending(&pending);
      if (sigismember(&pending, SIGPIPE) == 1) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        const timespec no_wait{};
        sigtimedwait(&set, nullptr, &no_wait);
      }
    }
    pthread_sigmask(SIG_SETMASK, &m_old, nullptr);
  }
  SigpipeGuard(const SigpipeGuard&) = delete;
  SigpipeGuard& operator=(const SigpipeGuard&) = delete;
  void failed() { m_failed = true; }

private:
  sigset_t m_old;
  bool m_failed = false;
};

bool is_error(const redisReply* r)
{
  return r == nullptr || r->type == REDIS_REPLY_ERROR;
}

std::string reply_text(const redisReply* r)
{
  if (r == nullptr || r->str == nullptr) return {};
  return std::string(r->str, r->len);
}

// The options with at least one connection and a timeout of at least 1 ms.
RedisCacheOptions with_limits(RedisCacheOptions o)
{
  if (o.max_connections < 1) o.max_connections = 1;
  if (o.timeout_ms < 1) o.timeout_ms = 1;
  return o;
}

} // namespace

// --- the URL ----------------------------------------------------------------------------------

Expected<RedisAddress> parse_redis_url(std::string_view url)
{
  auto bad = [&](std::string_view why) -> Unexpected {
    return make_error(Errc::invalid_input,
                      fmt::format("cache.url \"{}\" {}; write redis://HOST[:PORT][/DB] or "
                                  "unix:///PATH[?db=DB]",
                                  url, why),
                      "cache.url");
  };
  auto parse_db = [&](std::string_view text, RedisAddress& a) -> Expected<void> {
    auto db = to_int(text);
    if (!db || *db < 0 || *db > 1'000'000) return bad("has a database number that is not one");
    a.db = static_cast<int>(*db);
    return {};
  };
  RedisAddress a;
  if (url.rfind("unix://", 0) == 0) {
    std::string_view rest = url.substr(7);
    if (auto q = rest.find("?db="); q != std::string_view::npos) {
      if (auto ok = parse_db(rest.substr(q + 4), a); !ok) return Unexpected(ok.error());
      rest = rest.substr(0, q);
    }
    if (rest.empty() || rest[0] != '/') return bad("needs an absolute socket path");
    a.unix_path = std::string(rest);
    return a;
  }
  if (url.rfind("redis://", 0) != 0) return bad("must start with redis:// or unix://");
  std::string_view rest = url.substr(8);
  if (auto slash = rest.find('/'); slash != std::string_view::npos) {
    if (slash + 1 < rest.size()) {
      if (auto ok = parse_db(rest.substr(slash + 1), a); !ok) return Unexpected(ok.error());
    }
    rest = rest.substr(0, slash);
  }
  if (auto at = rest.rfind('@'); at != std::string_view::npos) {
    std::string_view user_info = rest.substr(0, at);
    if (auto colon = user_info.find(':'); colon != std::string_view::npos) {
      a.password = std::string(user_info.substr(colon + 1));
    } else {
      a.password = std::string(user_info);
    }
    rest = rest.substr(at + 1);
  }
  std::string_view port_text;
  if (!rest.empty() && rest[0] == '[') { // [::1]:6379
    const auto close = rest.find(']');
    if (close == std::string_view::npos) return bad("has an unclosed [ in its host");
    a.host = std::string(rest.substr(1, close - 1));
    rest = rest.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') return bad("has something after the host that is not :PORT");
      port_text = rest.substr(1);
    }
  } else if (auto colon = rest.rfind(':'); colon != std::string_view::npos) {
    a.host = std::string(rest.substr(0, colon));
    port_text = rest.substr(colon + 1);
  } else {
    a.host = std::string(rest);
  }
  if (a.host.empty()) return bad("has no host");
  if (!port_text.empty() || rest.find(':') != std::string_view::npos) {
    auto port = to_int(port_text);
    if (!port || *port < 1 || *port > 65535) return bad("has a port that is not 1 to 65535");
    a.port = static_cast<int>(*port);
  }
  return a;
}

// --- connections ------------------------------------------------------------------------------

void RedisCache::ReplyFree::operator()(redisReply* r) const
{
  freeReplyObject(r);
}

void RedisCache::ContextFree::operator()(redisContext* c) const
{
  redisFree(c);
}

RedisCache::RedisCache(RedisCacheOptions options)
  : m_options(with_limits(std::move(options))), m_stats_key(m_options.prefix + "~stats"),
    m_pool(PoolOptions{m_options.max_connections, m_options.timeout_ms,
                       Error(Errc::busy, fmt::format("all {} Redis connections stayed busy for {} ms",
                                                     m_options.max_connections,
                                                     m_options.timeout_ms))},
           [this] { return connect(); })
{
  if (auto address = parse_redis_url(m_options.url)) {
    m_address = std::move(*address);
  } else {
    m_bad_url = address.error().message;
  }
}

RedisCache::~RedisCache()
{
  // A short-lived process (acmo orders get) adds its counts on the way out; while Redis is
  // marked down they are lost rather than waited for.
  if (m_address && steady_ms() >= m_down_until_ms.load()) {
    auto counts = take_counts(true);
    if (!counts.empty()) (void)round_trip(counts);
  }
}

Expected<RedisCache::Context> RedisCache::connect()
{
  const timeval tv{static_cast<time_t>(m_options.timeout_ms / 1000),
                   static_cast<suseconds_t>((m_options.timeout_ms % 1000) * 1000)};
  const RedisAddress& a = *m_address;
  Context c(a.unix_path.empty() ? redisConnectWithTimeout(a.host.c_str(), a.port, tv)
                                : redisConnectUnixWithTimeout(a.unix_path.c_str(), tv));
  if (!c) return make_error(Errc::unavailable, "cannot allocate a Redis connection");
  if (c->err != 0) {
    return make_error(Errc::unavailable,
                      fmt::format("cannot connect to Redis at {}: {}", m_options.url, c->errstr));
  }
  redisSetTimeout(c.get(), tv);
  if (a.unix_path.empty()) redisEnableKeepAlive(c.get());
  // Named, so that CLIENT LIST shows which process a connection belongs to.
  std::vector<Command> setup{{"CLIENT", "SETNAME", fmt::format("acmo-{}", ::getpid())}};
  if (!a.password.empty()) setup.insert(setup.begin(), {"AUTH", a.password});
  if (a.db != 0) setup.push_back({"SELECT", std::to_string(a.db)});
  SigpipeGuard guard;
  for (const auto& cmd : setup) {
    std::vector<const char*> argv;
    std::vector<size_t> argvlen;
    for (const auto& arg : cmd) {
      argv.push_back(arg.data());
      argvlen.push_back(arg.size());
    }
    Reply r(static_cast<redisReply*>(
      redisCommandArgv(c.get(), static_cast<int>(argv.size()), argv.data(), argvlen.data())));
    if (is_error(r.get())) {
      guard.failed();
      return make_error(Errc::unavailable,
                        fmt::format("Redis at {} refused {}: {}", m_options.url, cmd[0],
                                    r ? reply_text(r.get()) : std::string(c->errstr)));
    }
  }
  return c;
}

void RedisCache::mark_down(const std::string& message)
{
  m_down_until_ms = steady_ms() + m_options.retry_after_ms;
  record_error(message);
}

Expected<std::vector<RedisCache::Reply>> RedisCache::round_trip(const std::vector<Command>& commands)
{
  for (int attempt = 0;; ++attempt) {
    auto conn = m_pool.acquire();
    if (!conn) {
      // Refused or timed out connecting: down. All connections busy: just this call fails.
      if (conn.error().code == Errc::unavailable) mark_down(conn.error().message);
      return Unexpected(conn.error());
    }
    redisContext* c = conn->conn().get();
    std::vector<Reply> replies;
    replies.reserve(commands.size());
    int err = 0;
    std::string errstr;
    {
      SigpipeGuard guard;
      std::vector<const char*> argv;
      std::vector<size_t> argvlen;
      for (const auto& cmd : commands) {
        argv.clear();
        argvlen.clear();
        for (const auto& arg : cmd) {
          argv.push_back(arg.data());
          argvlen.push_back(arg.size());
        }
        redisAppendCommandArgv(c, static_cast<int>(argv.size()), argv.data(), argvlen.data());
      }
      for (size_t i = 0; i < commands.size() && c->err == 0; ++i) {
        void* reply = nullptr;
        if (redisGetReply(c, &reply) != REDIS_OK) break;
        replies.emplace_back(static_cast<redisReply*>(reply));
      }
      if (c->err != 0) {
        err = errno;
        errstr = c->errstr;
        guard.failed();
      } else if (replies.size() != commands.size()) {
        errstr = "a reply went missing"; // cannot happen on a blocking context; be sure
        guard.failed();
      }
    }
    if (errstr.empty()) return replies;
    // A pooled connection that the server closed (a restart, CLIENT KILL, an idle timeout)
    // fails on first use: try once more on a fresh one. Not after a timeout: that would
    // double the wait while Redis is slow or unreachable.
    const bool timed_out = err == EAGAIN || err == EWOULDBLOCK || err == ETIMEDOUT;
    const bool retry = attempt == 0 && conn->reused() && !timed_out;
    conn->discard();
    m_pool.discard_all();
    if (!retry) {
      const std::string message =
        fmt::format("Redis at {} failed: {}", m_options.url,
                    timed_out ? fmt::format("no answer within {} ms", m_options.timeout_ms)
                              : errstr);
      mark_down(message);
      return make_error(Errc::unavailable, message);
    }
  }
}

Expected<std::vector<RedisCache::Reply>> RedisCache::exec(const std::vector<Command>& commands)
{
  if (!m_address) return make_error(Errc::invalid_input, m_bad_url, "cache.url");
  const int64_t down_until = m_down_until_ms.load();
  if (down_until != 0 && steady_ms() < down_until) {
    return make_error(Errc::unavailable,
                      fmt::format("Redis at {} failed less than {} ms ago; not asking it again yet",
                                  m_options.url, m_options.retry_after_ms));
  }
  if (m_has_pending.load() && !t_replaying) {
    if (auto sent = send_pending_invalidations(); !sent) return Unexpected(sent.error());
  }
  return round_trip(commands);
}

// --- counting ---------------------------------------------------------------------------------

void RedisCache::record_error(const std::string& message)
{
  std::lock_guard lock(m_error_mu);
  m_last_error = message;
}

std::string RedisCache::last_error() const
{
  std::lock_guard lock(m_error_mu);
  return m_last_error;
}

void RedisCache::count(std::atomic<int64_t>& pending, std::atomic<int64_t>& local)
{
  pending.fetch_add(1, std::memory_order_relaxed);
  local.fetch_add(1, std::memory_order_relaxed);
}

void RedisCache::fail(const Error& error)
{
  record_error(error.message);
  count(m_pending_errors, m_local_errors);
}

std::vector<RedisCache::Command> RedisCache::take_counts(bool force)
{
  const int64_t now = steady_ms();
  int64_t last = m_last_flush_ms.load();
  if (!force && (now - last < k_flush_interval_ms ||
                 !m_last_flush_ms.compare_exchange_strong(last, now))) {
    return {};
  }
  if (force) m_last_flush_ms = now;
  std::atomic<int64_t>* pending[] = {&m_pending_hits, &m_pending_misses, &m_pending_errors};
  std::vector<Command> out;
  for (size_t i = 0; i < 3; ++i) {
    const int64_t n = pending[i]->exchange(0);
    if (n != 0) {
      out.push_back({"HINCRBY", m_stats_key, std::string(k_count_fields[i]), std::to_string(n)});
    }
  }
  return out;
}

void RedisCache::restore_counts(const std::vector<Command>& commands)
{
  std::atomic<int64_t>* pending[] = {&m_pending_hits, &m_pending_misses, &m_pending_errors};
  for (const auto& cmd : commands) {
    if (cmd.size() != 4 || cmd[0] != "HINCRBY") continue;
    for (size_t i = 0; i < 3; ++i) {
      if (cmd[2] == k_count_fields[i]) pending[i]->fetch_add(to_int(cmd[3]).value_or(0));
    }
  }
}

// --- keys -------------------------------------------------------------------------------------

std::string RedisCache::full_key(std::string_view key) const
{
  return m_options.prefix + std::string(key);
}

std::string RedisCache::index_key(std::string_view indexed_prefix) const
{
  return m_options.prefix + "~index:" + std::string(indexed_prefix);
}

bool RedisCache::is_internal(std::string_view full) const
{
  return full.size() > m_options.prefix.size() && full[m_options.prefix.size()] == '~';
}

const std::string* RedisCache::indexed_prefix_of(std::string_view key) const
{
  for (const auto& p : m_options.indexed_prefixes) {
    if (key.substr(0, p.size()) == p) return &p;
  }
  return nullptr;
}

bool RedisCache::is_indexed(std::string_view prefix) const
{
  for (const auto& p : m_options.indexed_prefixes) {
    if (prefix == p) return true;
  }
  return false;
}

template<typename Each> Expected<void> RedisCache::scan(std::string_view sub_prefix, Each&& each)
{
  const std::string pattern = escape_glob(full_key(sub_prefix)) + "*";
  const std::string count = std::to_string(k_keys_per_command);
  std::string cursor = "0";
  do {
    auto replies = exec({{"SCAN", cursor, "MATCH", pattern, "COUNT", count}});
    if (!replies) return Unexpected(replies.error());
    const redisReply* r = replies->front().get();
    if (is_error(r) || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
      return make_error(Errc::unavailable, "Redis answered SCAN with " + reply_text(r));
    }
    cursor = reply_text(r->element[0]);
    std::vector<std::string> batch;
    const redisReply* keys = r->element[1];
    for (size_t i = 0; i < keys->elements; ++i) batch.push_back(reply_text(keys->element[i]));
    if (auto ok = each(std::move(batch)); !ok) return ok;
  } while (cursor != "0");
  return {};
}

Expected<int64_t> RedisCache::delete_keys(const std::vector<std::string>& full_keys)
{
  if (full_keys.empty()) return 0;
  std::vector<Command> commands;
  for (size_t i = 0; i < full_keys.size(); i += k_keys_per_command) {
    Command del{"DEL"};
    const size_t end = std::min(full_keys.size(), i + k_keys_per_command);
    del.insert(del.end(), full_keys.begin() + static_cast<std::ptrdiff_t>(i),
               full_keys.begin() + static_cast<std::ptrdiff_t>(end));
    commands.push_back(std::move(del));
  }
  auto replies = exec(commands);
  if (!replies) return Unexpected(replies.error());
  int64_t deleted = 0;
  for (const auto& r : *replies) {
    if (is_error(r.get())) {
      return make_error(Errc::unavailable, "Redis answered DEL with " + reply_text(r.get()));
    }
    deleted += r->integer;
  }
  return deleted;
}

Expected<void> RedisCache::drop_indexed(const std::vector<std::string>& keys,
                                        std::string_view prefix)
{
  // Take the index's members and delete it in one transaction: a put that lands after it
  // starts a new index, and its key is dropped by the next invalidation.
  const std::string index = index_key(prefix);
  std::vector<Command> commands{{"MULTI"}};
  if (!keys.empty()) {
    Command del{"DEL"};
    for (const auto& k : keys) del.push_back(full_key(k));
    commands.push_back(std::move(del));
  }
  commands.push_back({"SMEMBERS", index});
  commands.push_back({"DEL", index});
  commands.push_back({"EXEC"});
  auto replies = exec(commands);
  if (!replies) return Unexpected(replies.error());
  const redisReply* r = replies->back().get();
  if (is_error(r) || r->type != REDIS_REPLY_ARRAY) {
    return make_error(Errc::unavailable, "Redis answered EXEC with " + reply_text(r));
  }
  const redisReply* members = r->element[keys.empty() ? 0 : 1];
  std::vector<std::string> listed;
  for (size_t i = 0; i < members->elements; ++i) listed.push_back(reply_text(members->element[i]));
  auto deleted = delete_keys(listed);
  if (!deleted) return Unexpected(deleted.error());
  return {};
}

Expected<void> RedisCache::try_invalidate(const std::vector<std::string>& keys,
                                          std::optional<std::string_view> prefix)
{
  if (prefix && is_indexed(*prefix)) return drop_indexed(keys, *prefix);
  std::vector<std::string> full;
  for (const auto& k : keys) full.push_back(full_key(k));
  if (auto deleted = delete_keys(full); !deleted) return Unexpected(deleted.error());
  if (!prefix) return {};
  return scan(*prefix, [&](std::vector<std::string> batch) -> Expected<void> {
    std::erase(batch, m_stats_key);
    if (auto deleted = delete_keys(batch); !deleted) return Unexpected(deleted.error());
    return {};
  });
}

Expected<int64_t> RedisCache::clear_all()
{
  int64_t removed = 0;
  auto ok = scan("", [&](std::vector<std::string> batch) -> Expected<void> {
    std::vector<std::string> entries, internal;
    for (auto& k : batch) {
      if (k == m_stats_key) continue; // the figures outlive a clear
      (is_internal(k) ? internal : entries).push_back(std::move(k));
    }
    auto deleted = delete_keys(entries);
    if (!deleted) return Unexpected(deleted.error());
    removed += *deleted;
    if (auto gone = delete_keys(internal); !gone) return Unexpected(gone.error());
    return {};
  });
  if (!ok) return Unexpected(ok.error());
  return removed;
}

// --- invalidations that could not be sent -----------------------------------------------------

void RedisCache::remember_invalidation(const std::vector<std::string>& keys,
                                       std::optional<std::string_view> prefix)
{
  std::lock_guard lock(m_pending_mu);
  if (!m_pending_clear) {
    m_pending_keys.insert(keys.begin(), keys.end());
    if (prefix) m_pending_prefixes.emplace(*prefix);
    if (m_pending_keys.size() + m_pending_prefixes.size() > k_max_pending_keys) {
      m_pending_clear = true;
      m_pending_keys.clear();
      m_pending_prefixes.clear();
    }
  }
  m_has_pending = true;
}

Expected<void> RedisCache::send_pending_invalidations()
{
  std::lock_guard lock(m_pending_mu);
  if (!m_has_pending.load()) return {}; // another thread sent them while this one waited
  t_replaying = true;
  struct Reset {
    ~Reset() { t_replaying = false; }
  } reset;
  if (m_pending_clear) {
    if (auto cleared = clear_all(); !cleared) return Unexpected(cleared.error());
  } else {
    std::vector<std::string> keys(m_pending_keys.begin(), m_pending_keys.end());
    if (m_pending_prefixes.empty()) {
      if (auto ok = try_invalidate(keys, std::nullopt); !ok) return ok;
    }
    for (const auto& p : m_pending_prefixes) {
      if (auto ok = try_invalidate(keys, p); !ok) return ok;
      keys.clear();
    }
  }
  m_pending_keys.clear();
  m_pending_prefixes.clear();
  m_pending_clear = false;
  m_has_pending = false;
  return {};
}

// --- the Cache port ---------------------------------------------------------------------------

std::optional<std::string> RedisCache::get(std::string_view key)
{
  // The counts ride along with a get at most once a second: no extra round trip.
  std::vector<Command> commands = take_counts(false);
  const size_t n_counts = commands.size();
  commands.push_back({"GET", full_key(key)});
  auto replies = exec(commands);
  if (!replies) {
    commands.resize(n_counts);
    restore_counts(commands);
    fail(replies.error());
    count(m_pending_misses, m_local_misses);
    return std::nullopt;
  }
  const redisReply* r = (*replies)[n_counts].get();
  if (r->type == REDIS_REPLY_STRING) {
    count(m_pending_hits, m_local_hits);
    return std::string(r->str, r->len);
  }
  if (r->type != REDIS_REPLY_NIL) fail(Error(Errc::internal, "Redis answered GET with " + reply_text(r)));
  count(m_pending_misses, m_local_misses);
  return std::nullopt;
}

void RedisCache::put(std::string_view key, std::string_view value)
{
  const std::string full = full_key(key);
  const std::string px = std::to_string(m_options.ttl_ms);
  std::vector<Command> commands = take_counts(false);
  const size_t n_counts = commands.size();
  const std::string* indexed = indexed_prefix_of(key);
  if (indexed != nullptr) {
    // The key and its index entry together, or an invalidation could miss the key.
    const std::string index = index_key(*indexed);
    commands.insert(commands.end(), {{"MULTI"},
                                     {"SET", full, std::string(value), "PX", px},
                                     {"SADD", index, full},
                                     {"PEXPIRE", index, px},
                                     {"EXEC"}});
  } else {
    commands.push_back({"SET", full, std::string(value), "PX", px});
  }
  auto replies = exec(commands);
  if (!replies) {
    commands.resize(n_counts);
    restore_counts(commands);
    return fail(replies.error());
  }
  const redisReply* r = replies->back().get();
  if (is_error(r) || (indexed != nullptr && r->type != REDIS_REPLY_ARRAY)) {
    fail(Error(Errc::internal, "Redis refused a SET: " + reply_text(r)));
  }
}

void RedisCache::invalidate(std::string_view key)
{
  invalidate_impl({std::string(key)}, std::nullopt);
}

void RedisCache::invalidate_prefix(std::string_view prefix)
{
  invalidate_impl({}, prefix);
}

void RedisCache::invalidate_batch(const std::vector<std::string>& keys, std::string_view prefix)
{
  invalidate_impl(keys, prefix);
}

void RedisCache::invalidate_impl(const std::vector<std::string>& keys,
                                 std::optional<std::string_view> prefix)
{
  if (auto ok = try_invalidate(keys, prefix); !ok) {
    fail(ok.error());
    // Sent before anything else once Redis answers again: a Redis that comes back with its
    // data (a network cut, a restart from its dump) must not serve what this change made stale.
    if (m_address) remember_invalidation(keys, prefix);
    return;
  }
  // A handler only invalidates: its counts (the errors of an outage) go from here.
  if (auto counts = take_counts(false); !counts.empty()) {
    if (!exec(counts)) restore_counts(counts);
  }
}

std::vector<std::string> RedisCache::keys()
{
  std::vector<std::string> out;
  auto ok = scan("", [&](std::vector<std::string> batch) -> Expected<void> {
    for (auto& k : batch) {
      if (!is_internal(k)) out.push_back(k.substr(m_options.prefix.size()));
    }
    return {};
  });
  if (!ok) {
    fail(ok.error());
    return {};
  }
  return out;
}

int64_t RedisCache::clear()
{
  auto removed = clear_all();
  if (!removed) {
    fail(removed.error());
    return 0;
  }
  return *removed;
}

CacheStats RedisCache::stats()
{
  CacheStats s;
  s.backend = "redis";
  auto commands = take_counts(true);
  const size_t n_counts = commands.size();
  commands.push_back({"HMGET", m_stats_key, "hits", "misses", "errors"});
  auto replies = exec(commands);
  int64_t keys = 0;
  Expected<void> counted =
    replies ? scan("", [&](std::vector<std::string> batch) -> Expected<void> {
      for (const auto& k : batch) keys += is_internal(k) ? 0 : 1;
      return {};
    })
            : Expected<void>(Unexpected(replies.error()));
  const redisReply* r = replies ? (*replies)[n_counts].get() : nullptr;
  if (!counted || is_error(r) || r->type != REDIS_REPLY_ARRAY || r->elements != 3) {
    if (!replies) restore_counts(commands);
    fail(counted ? Error(Errc::internal, "Redis answered HMGET with " + reply_text(r))
                 : counted.error());
    s.hits = m_local_hits.load();
    s.misses = m_local_misses.load();
    s.errors = m_local_errors.load();
    return s;
  }
  int64_t* fields[] = {&s.hits, &s.misses, &s.errors};
  for (size_t i = 0; i < 3; ++i) *fields[i] = to_int(reply_text(r->element[i])).value_or(0);
  s.keys = keys;
  return s;
}

} // namespace acmo
