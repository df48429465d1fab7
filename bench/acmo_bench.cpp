// acmo-bench: measures the queue engine on this machine and prints the figures as JSON.
//
// Every scenario runs --runs times on a fresh database; the report gives each run and the
// median. Baselines (raw SQLite inserts with one fsync per row, and with 1,000 rows per
// commit; for the PostgreSQL queue, single-row INSERTs from 32 connections) are measured in
// the same run, so the ratios hold on a noisy shared machine.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <pqxx/pqxx>
#include <nlohmann/json.hpp>
#include <hiredis/hiredis.h>
#include <sqlite3.h>

#include "core/cache/redis_cache.hpp"
#include "core/handler/order_handler.hpp"
#include "core/orders/order_event.hpp"
#include "core/queue/postgres/pg_queue.hpp"
#include "core/queue/sqlite/sqlite_queue.hpp"
#include "core/store/pg_order_store.hpp"

namespace {

using acmo::Queue;
using acmo::QueueOptions;
using acmo::SqliteQueue;
using acmo::SendRequest;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Settings {
  int runs = 3;
  int64_t bulk_messages = 200'000;
  int threads = 32;
  int64_t per_thread = 1'000;
  int64_t drain_messages = 100'000;
  int wake_samples = 200;
  int64_t pipeline_events = 40'000;
  std::string dir;
  std::vector<std::string> only;
  bool durable_full = true;
  int http_duration = 10;
  // The PostgreSQL queue's scenarios (ACMO_BENCH_PG_URL), sized to take seconds, not minutes.
  std::string pg_url;
  int64_t pg_per_connection = 100; // baseline rows and concurrent sends per thread
  int64_t pg_bulk_messages = 20'000;
  int64_t pg_file_lines = 100'000;
  int64_t pg_drain_messages = 5'000;
  int64_t pg_events = 20'000;
  int pg_wake_samples = 100;
};

// Exit status of a command line that asks for what cannot be done (as acmo's usage errors).
constexpr int k_exit_usage = 2;

double seconds_since(Clock::time_point start)
{
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double median(std::vector<double> v)
{
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double percentile(std::vector<double> v, double p)
{
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  auto index = static_cast<size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(index, v.size() - 1)];
}

// A fresh directory per run, removed afterwards.
class RunDir
{
public:
  explicit RunDir(const std::string& parent)
  {
    std::string templ = parent + "/acmo-bench-XXXXXX";
    if (!mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed in " + parent);
    m_path = templ;
  }
  ~RunDir()
  {
    std::error_code ec;
    std::filesystem::remove_all(m_path, ec);
  }
  std::string db() const { return m_path + "/acmo.db"; }
  const std::string& path() const { return m_path; }

private:
  std::string m_path;
};

std::unique_ptr<Queue> open(const std::string& path, const Settings& s, QueueOptions o = {})
{
  o.durability_full = s.durable_full;
  auto q = SqliteQueue::open(path, o);
  if (!q) throw std::runtime_error(q.error().message);
  return std::move(*q);
}

std::string event_body(int64_t i)
{
  return fmt::format(R"({{"type":"CREATE","orderId":"ord_{:012}","data":{{"customer_name":"Bench",)"
                     R"("customer_email":"bench@example.com","items":[]}}}})",
                     i);
}

std::vector<SendRequest> make_requests(int64_t n, int64_t offset, int64_t groups)
{
  std::vector<SendRequest> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    auto& r = out[static_cast<size_t>(i)];
    r.body = event_body(offset + i);
    r.group_id = groups <= 1 ? "orders" : fmt::format("g{}", (offset + i) % groups);
  }
  return out;
}

// Send everything, or fail the benchmark.
void fill(Queue& q, const std::vector<SendRequest>& requests)
{
  for (const auto& r : q.send_bulk(requests)) {
    if (!r) throw std::runtime_error(r.error().message);
  }
}

// --- baselines ------------------------------------------------------------------------------

double raw_sqlite_inserts(const std::string& path, int64_t rows, int64_t per_commit)
{
  sqlite3* db = nullptr;
  sqlite3_open(path.c_str(), &db);
  sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                   "CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
               nullptr, nullptr, nullptr);
  sqlite3_stmt* stmt = nullptr;
  sqlite3_prepare_v2(db, "INSERT INTO t(body) VALUES (?1)", -1, &stmt, nullptr);
  const std::string body = event_body(0);
  auto start = Clock::now();
  for (int64_t i = 0; i < rows; i += per_commit) {
    sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr);
    for (int64_t j = 0; j < per_commit && i + j < rows; ++j) {
      sqlite3_bind_text(stmt, 1, body.c_str(), static_cast<int>(body.size()), SQLITE_STATIC);
      sqlite3_step(stmt);
      sqlite3_reset(stmt);
    }
    sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  }
  double rate = static_cast<double>(rows) / seconds_since(start);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return rate;
}

// --- scenarios ------------------------------------------------------------------------------

double bulk_send(const Settings& s)
{
  RunDir dir(s.dir);
  auto q = open(dir.db(), s);
  auto requests = make_requests(s.bulk_messages, 0, 1);
  auto start = Clock::now();
  auto results = q->send_bulk(requests);
  double elapsed = seconds_since(start);
  for (const auto& r : results) {
    if (!r) throw std::runtime_error("bulk send failed: " + r.error().message);
  }
  return static_cast<double>(s.bulk_messages) / elapsed;
}

double concurrent_send(const Settings& s)
{
  RunDir dir(s.dir);
  auto q = open(dir.db(), s);
  std::vector<std::vector<SendRequest>> work;
  for (int t = 0; t < s.threads; ++t) work.push_back(make_requests(s.per_thread, t * s.per_thread, 1));
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<int64_t> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < s.threads; ++t) {
    threads.emplace_back([&, t] {
      ++ready;
      while (!go) std::this_thread::yield();
      for (const auto& r : work[static_cast<size_t>(t)]) {
        if (!q->send(r)) ++failures;
      }
    });
  }
  while (ready < s.threads) std::this_thread::yield();
  auto start = Clock::now();
  go = true;
  for (auto& t : threads) t.join();
  double elapsed = seconds_since(start);
  if (failures > 0) throw std::runtime_error("concurrent sends failed");
  auto cs = q->commit_stats();
  fmt::print(stderr, "concurrent_send: {} requests in {} transactions\n", cs.requests, cs.transactions);
  return static_cast<double>(s.threads * s.per_thread) / elapsed;
}

// A schema of its own in the PostgreSQL database of `base_url`, dropped at the end, so that each
// run starts from empty tables.
class PgBenchSchema
{
public:
  explicit PgBenchSchema(std::string base_url)
    : m_base(std::move(base_url)),
      m_name(fmt::format("acmo_bench_{}_{}", ::getpid(), s_next++))
  {
    pqxx::connection c(m_base);
    pqxx::nontransaction(c).exec0("CREATE SCHEMA " + m_name);
  }
  ~PgBenchSchema()
  {
    try {
      pqxx::connection c(m_base);
      pqxx::nontransaction(c).exec0("DROP SCHEMA " + m_name + " CASCADE");
    } catch (const std::exception&) {
      // A leftover schema in a benchmark database is the lesser harm.
    }
  }
  const std::string& name() const { return m_name; }
  std::string url() const
  {
    return m_base + (m_base.find('?') == std::string::npos ? "?" : "&")
           + "options=-csearch_path%3D" + m_name;
  }

private:
  static inline int s_next = 0;
  std::string m_base;
  std::string m_name;
};

// End to end: a full queue of order events (CREATE, then UPDATE to processing, per order)
// applied by the OrderHandler, in one group or one group per order; to the embedded store, or
// with `pg_url` to PostgreSQL (in a schema of its own).
double pipeline(const Settings& s, bool group_per_order, int concurrency, int batch,
                const std::string& pg_url = {})
{
  RunDir dir(s.dir);
  auto q = open(dir.db(), s);
  const int64_t orders = s.pipeline_events / 2;
  std::vector<SendRequest> requests;
  requests.reserve(static_cast<size_t>(s.pipeline_events));
  for (int64_t pass = 0; pass < 2; ++pass) {
    for (int64_t i = 0; i < orders; ++i) {
      acmo::OrderEvent e;
      e.order_id = fmt::format("ord_{:012}", i);
      if (pass == 0) {
        e.type = acmo::EventType::create;
        e.data = {{"customer_name", "Bench"},
                  {"customer_email", "bench@example.com"},
                  {"items", nlohmann::json::array({{{"product_id", "p1"}, {"quantity", 2}, {"unit_price", 9.99}}})}};
      } else {
        e.type = acmo::EventType::update;
        e.data = {{"status", "processing"}};
      }
      SendRequest r;
      r.body = acmo::event_body(e);
      r.group_id = group_per_order ? e.order_id : "orders";
      requests.push_back(std::move(r));
    }
  }
  fill(*q, requests);
  acmo::HandlerOptions options{concurrency, batch, 50};
  std::unique_ptr<PgBenchSchema> schema;
  std::unique_ptr<acmo::PgOrderStore> pg;
  if (!pg_url.empty()) {
    schema = std::make_unique<PgBenchSchema>(pg_url);
    auto store = acmo::PgOrderStore::open(acmo::PgOptions{schema->url(), 4, 5'000});
    if (!store) throw std::runtime_error(store.error().message);
    pg = std::move(*store);
    options.writer = pg.get();
  }
  acmo::OrderHandler handler(*q, dir.db(), options);
  auto start = Clock::now();
  auto stats = handler.run_once();
  double elapsed = seconds_since(start);
  if (!stats) throw std::runtime_error(stats.error().message);
  if (stats->processed != s.pipeline_events) {
    throw std::runtime_error(fmt::format("pipeline applied {} of {} events ({})", stats->processed,
                                         s.pipeline_events, stats->last_error));
  }
  return static_cast<double>(stats->processed) / elapsed;
}

// --- the PostgreSQL queue ---------------------------------------------------------------------

std::unique_ptr<Queue> open_pg(const Settings& s, const PgBenchSchema& schema)
{
  QueueOptions o;
  o.durability_full = s.durable_full;
  auto q = acmo::PgQueue::open(s.pg_url, schema.name(), o);
  if (!q) throw std::runtime_error(q.error().message);
  return std::move(*q);
}

// Start `n` threads, let them run `work(thread)` at once, and return the seconds until the
// last one is done. A thread that throws fails the benchmark.
double timed_threads(int n, const std::function<void(int)>& work)
{
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<int> failures{0};
  std::string failure;
  std::mutex failure_mu;
  std::vector<std::thread> threads;
  for (int t = 0; t < n; ++t) {
    threads.emplace_back([&, t] {
      ++ready;
      while (!go) std::this_thread::yield();
      try {
        work(t);
      } catch (const std::exception& e) {
        std::lock_guard lock(failure_mu);
        if (failures++ == 0) failure = e.what();
      }
    });
  }
  while (ready < n) std::this_thread::yield();
  auto start = Clock::now();
  go = true;
  for (auto& t : threads) t.join();
  double elapsed = seconds_since(start);
  if (failures > 0) throw std::runtime_error(failure);
  return elapsed;
}

// The baseline of the PostgreSQL scenarios: --threads connections, each inserting one row at
// a time, every row its own transaction (with synchronous_commit on, as the server is set, a
// commit waits for its WAL flush; concurrent commits share flushes). Rows/s.
double pg_baseline(const Settings& s)
{
  PgBenchSchema schema(s.pg_url);
  std::vector<std::unique_ptr<pqxx::connection>> conns;
  for (int t = 0; t < s.threads; ++t) {
    conns.push_back(std::make_unique<pqxx::connection>(schema.url()));
    if (t == 0) {
      pqxx::nontransaction(*conns[0]).exec0(
        "CREATE TABLE baseline (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " body text NOT NULL)");
    }
    conns.back()->prepare("insert", "INSERT INTO baseline (body) VALUES ($1)");
  }
  const std::string body = event_body(0);
  double elapsed = timed_threads(s.threads, [&](int t) {
    pqxx::nontransaction tx(*conns[static_cast<size_t>(t)]);
    for (int64_t i = 0; i < s.pg_per_connection; ++i) tx.exec_prepared0("insert", body);
  });
  return static_cast<double>(s.threads * s.pg_per_connection) / elapsed;
}

// --threads threads share one queue, as acmo serve's do, each sending one message at a time
// and waiting until it is durable.
double pg_send_concurrent(const Settings& s)
{
  PgBenchSchema schema(s.pg_url);
  auto q = open_pg(s, schema);
  // The sending connections (the group commit's, the flusher's), made before the clock runs.
  for (const auto& r : make_requests(1, -1, 1)) {
    if (auto sent = q->send(r); !sent) throw std::runtime_error(sent.error().message);
  }
  std::vector<std::vector<SendRequest>> work;
  for (int t = 0; t < s.threads; ++t) {
    work.push_back(make_requests(s.pg_per_connection, t * s.pg_per_connection, 1));
  }
  double elapsed = timed_threads(s.threads, [&](int t) {
    for (const auto& r : work[static_cast<size_t>(t)]) {
      if (auto sent = q->send(r); !sent) throw std::runtime_error(sent.error().message);
    }
  });
  auto cs = q->commit_stats();
  fmt::print(stderr, "pg_send_concurrent: {} requests in {} statements\n", cs.requests,
             cs.transactions);
  return static_cast<double>(s.threads * s.pg_per_connection) / elapsed;
}

// `groups` 1: one group; 0: a group per message, as order events come.
double pg_send_bulk(const Settings& s, int64_t groups)
{
  PgBenchSchema schema(s.pg_url);
  auto q = open_pg(s, schema);
  fill(*q, make_requests(1, -1, 1)); // send_bulk's connections, made before the clock runs
  auto requests = make_requests(s.pg_bulk_messages, 0, groups == 0 ? s.pg_bulk_messages : groups);
  auto start = Clock::now();
  fill(*q, requests);
  return static_cast<double>(s.pg_bulk_messages) / seconds_since(start);
}

// Receive up to 10 messages and delete them in one call: how many (0: none was there).
int64_t receive_and_delete(Queue& q, std::vector<std::string>& receipts)
{
  auto got = q.receive(10);
  if (!got) throw std::runtime_error(got.error().message);
  receipts.clear();
  for (const auto& m : *got) receipts.push_back(m.receipt);
  if (receipts.empty()) return 0;
  for (const auto& r : q.remove_batch(receipts)) {
    if (!r) throw std::runtime_error(r.error().message);
  }
  return static_cast<int64_t>(receipts.size());
}

// Receive `messages` messages in batches of 10, deleting each batch in one call: messages/s.
double drain(Queue& q, int64_t messages)
{
  int64_t done = 0;
  std::vector<std::string> receipts;
  auto start = Clock::now();
  while (done < messages) {
    const int64_t n = receive_and_delete(q, receipts);
    if (n == 0) throw std::runtime_error("the queue ran dry before the last message");
    done += n;
  }
  return static_cast<double>(done) / seconds_since(start);
}

// Receive + delete in batches of 10 from a queue whose messages are spread over 1,000 groups,
// by `receivers` threads sharing one PgQueue (each on a connection of its pool), as the threads
// of an acmo serve answer the receives of several consumers. Messages/s. `after_idle`: the
// queue was received from while it was empty before the messages came, as a server's
// receivers poll an idle queue (that receive does the queue's housekeeping, due again only
// a second later).
double pg_receive_delete(const Settings& s, int receivers, bool after_idle = false)
{
  PgBenchSchema schema(s.pg_url);
  auto q = open_pg(s, schema);
  if (after_idle) {
    auto got = q->receive(1);
    if (!got) throw std::runtime_error(got.error().message);
    if (!got->empty()) throw std::runtime_error("pg_receive_delete: the new queue held messages");
  }
  fill(*q, make_requests(s.pg_drain_messages, 0, 1000));
  // The receivers' connections are made before the clock runs, as those of a server that has
  // been running are, by as many counts of the queue at once; the pool keeps them open. The
  // sends' connections are not the pool's: a single receiver needs this too.
  timed_threads(receivers, [&](int) {
    if (auto st = q->stats(); !st) throw std::runtime_error(st.error().message);
  });
  if (receivers == 1) return drain(*q, s.pg_drain_messages);
  std::atomic<int64_t> done{0};
  double elapsed = timed_threads(receivers, [&](int) {
    std::vector<std::string> receipts;
    auto idle_since = Clock::now();
    while (done.load() < s.pg_drain_messages) {
      const int64_t n = receive_and_delete(*q, receipts);
      if (n == 0) {
        // The groups left are held by the other receivers, or the queue is empty.
        if (seconds_since(idle_since) > 10) {
          throw std::runtime_error("pg_receive_delete: a receiver found nothing for 10 s");
        }
        std::this_thread::yield();
        continue;
      }
      done += n;
      idle_since = Clock::now();
    }
  });
  if (done.load() != s.pg_drain_messages) {
    throw std::runtime_error(fmt::format("pg_receive_delete: {} of {} messages received",
                                         done.load(), s.pg_drain_messages));
  }
  return static_cast<double>(done.load()) / elapsed;
}

// End to end as it is deployed: queue and orders in one PostgreSQL database (the same schema
// here), a queue of CREATE events, one group per order, and `processes` acmo run-handler
// --once processes of `workers` worker threads each (handler.concurrency) with the default
// configuration otherwise, timed from their start until the last has emptied the queue and
// exited. Events/s, and the seconds a handler takes to start, find the queue empty and exit.
struct EndToEnd {
  double rate;
  double start_seconds;
};

// Start this build's acmo (or the one ACMO_BINARY names, to measure another build) with
// `args`, its standard output to /dev/null: its pid.
pid_t spawn_acmo(std::vector<std::string> args)
{
  const char* from_env = std::getenv("ACMO_BINARY");
  std::string binary = from_env != nullptr && *from_env != '\0' ? from_env : ACMO_BINARY;
  args.insert(args.begin(), binary);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  const int failed = posix_spawn(&pid, binary.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (failed != 0) throw std::runtime_error("cannot start " + binary);
  return pid;
}

// Wait for every one of `children`: how many did not exit with 0.
int wait_failed(const std::vector<pid_t>& children)
{
  int failed = 0;
  for (pid_t pid : children) {
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed;
  }
  return failed;
}

// An acmo.toml in `dir` for the queue and the orders in `schema`, with `queue_keys` more lines
// of [queue] and `rest` more sections, and the orders' tables made, so that the acmo processes
// started with it are timed at their work and not at a migration: its path.
std::string pg_config(const Settings& s, const RunDir& dir, const PgBenchSchema& schema,
                      const std::string& queue_keys, const std::string& rest)
{
  const std::string config = dir.path() + "/acmo.toml";
  FILE* f = std::fopen(config.c_str(), "w");
  if (f == nullptr) throw std::runtime_error("cannot write " + config);
  fmt::print(f, "[queue]\nbackend = \"postgres\"\nschema = {}\ndurability = \"{}\"\n{}"
                "[store]\nbackend = \"postgres\"\nurl = {}\n{}",
             json(schema.name()).dump(), s.durable_full ? "full" : "normal", queue_keys,
             json(schema.url()).dump(), rest);
  std::fclose(f);
  if (auto store = acmo::PgOrderStore::open(acmo::PgOptions{schema.url(), 1, 5'000}); !store) {
    throw std::runtime_error(store.error().message);
  }
  return config;
}

// `acmo send --file` of s.pg_file_lines order events (the bodies of make_requests), as one
// runs it, timed from its start until it has exited, every line durable: to one group
// (queue.group_by = "single", the default) or a group per order ("order"). `analyzed_empty`:
// the queue's tables vacuumed and analyzed while empty first, as autovacuum leaves those of a
// drained queue. Lines/s.
double pg_send_file(const Settings& s, bool group_per_order, bool analyzed_empty = false)
{
  RunDir dir(s.dir);
  PgBenchSchema schema(s.pg_url);
  const std::string config = pg_config(
    s, dir, schema, fmt::format("group_by = \"{}\"\n", group_per_order ? "order" : "single"), "");
  const std::string events = dir.path() + "/events.jsonl";
  FILE* f = std::fopen(events.c_str(), "w");
  if (f == nullptr) throw std::runtime_error("cannot write " + events);
  for (int64_t i = 0; i < s.pg_file_lines; ++i) fmt::print(f, "{}\n", event_body(i));
  std::fclose(f);
  auto q = open_pg(s, schema); // the queue's tables, made
  if (analyzed_empty) {
    pqxx::connection c(schema.url());
    pqxx::nontransaction(c).exec0("VACUUM ANALYZE messages, message_groups, dedup");
  }
  const auto start = Clock::now();
  const int failed = wait_failed(
    {spawn_acmo({"--config", config, "--data-dir", dir.path(), "-q", "send", "--file", events})});
  const double elapsed = seconds_since(start);
  if (failed > 0) {
    throw std::runtime_error("pg_send_file: acmo send --file failed; its messages are above");
  }
  auto stats = q->stats();
  if (!stats) throw std::runtime_error(stats.error().message);
  if (stats->sent != s.pg_file_lines) {
    throw std::runtime_error(fmt::format("pg_send_file: {} of {} lines sent", stats->sent,
                                         s.pg_file_lines));
  }
  return static_cast<double>(s.pg_file_lines) / elapsed;
}

// `analyzed_empty`: ANALYZE the orders table while it is empty, before the handlers start, as
// an operator's `vacuumdb --analyze` of a new database does: the planner then takes it for one
// row until autovacuum analyzes it again.
EndToEnd pg_end_to_end(const Settings& s, int processes, int workers, bool analyzed_empty)
{
  RunDir dir(s.dir);
  PgBenchSchema schema(s.pg_url);
  const std::string config =
    pg_config(s, dir, schema, "", fmt::format("[handler]\nconcurrency = {}\n", workers));
  auto q = open_pg(s, schema);
  std::vector<SendRequest> requests;
  requests.reserve(static_cast<size_t>(s.pg_events));
  for (int64_t i = 0; i < s.pg_events; ++i) {
    acmo::OrderEvent e;
    e.order_id = fmt::format("ord_{:012}", i);
    e.type = acmo::EventType::create;
    e.data = {{"customer_name", "Bench"},
              {"customer_email", "bench@example.com"},
              {"items", json::array({{{"product_id", "p1"}, {"quantity", 2}, {"unit_price", 9.99}}})}};
    SendRequest r;
    r.body = acmo::event_body(e);
    r.group_id = e.order_id;
    requests.push_back(std::move(r));
  }
  fill(*q, requests);
  if (analyzed_empty) {
    pqxx::connection c(schema.url());
    pqxx::nontransaction(c).exec0("ANALYZE orders");
  }

  // Start `n` acmo run-handler --once and wait until all have exited: seconds.
  const auto run_handlers = [&](int n) {
    std::vector<pid_t> children;
    auto start = Clock::now();
    for (int i = 0; i < n; ++i) {
      children.push_back(spawn_acmo({"--config", config, "--data-dir", dir.path(), "-q",
                                     "run-handler", "--once"}));
    }
    const int failed = wait_failed(children);
    double elapsed = seconds_since(start);
    if (failed > 0) {
      throw std::runtime_error(fmt::format("pg_end_to_end: {} of {} acmo run-handler --once "
                                           "processes failed; their messages are above",
                                           failed, n));
    }
    return elapsed;
  };
  const double elapsed = run_handlers(processes);
  auto stats = q->stats();
  if (!stats) throw std::runtime_error(stats.error().message);
  if (stats->deleted != s.pg_events || stats->visible != 0) {
    throw std::runtime_error(fmt::format("pg_end_to_end: {} of {} events applied, {} left",
                                         stats->deleted, s.pg_events, stats->visible));
  }
  // What the rate includes of starting a handler: one more, on the empty queue.
  return EndToEnd{static_cast<double>(s.pg_events) / elapsed, run_handlers(1)};
}

// The consumer loop with remove_and_receive: each batch's deletion rides on the next receive.
double receive_delete_combined(const Settings& s, int64_t groups)
{
  RunDir dir(s.dir);
  auto q = open(dir.db(), s);
  fill(*q, make_requests(s.drain_messages, 0, groups));
  int64_t done = 0;
  std::vector<std::string> receipts;
  std::vector<acmo::Expected<void>> deleted;
  auto start = Clock::now();
  while (true) {
    auto got = q->remove_and_receive(receipts, deleted, 10);
    if (!got) throw std::runtime_error(got.error().message);
    for (const auto& d : deleted) {
      if (!d) throw std::runtime_error(d.error().message);
    }
    done += static_cast<int64_t>(receipts.size());
    if (got->empty()) break;
    receipts.clear();
    for (const auto& m : *got) receipts.push_back(m.receipt);
  }
  if (done != s.drain_messages) throw std::runtime_error("combined drain lost messages");
  return static_cast<double>(done) / seconds_since(start);
}

double receive_delete(const Settings& s, int64_t groups)
{
  RunDir dir(s.dir);
  auto q = open(dir.db(), s);
  fill(*q, make_requests(s.drain_messages, 0, groups));
  return drain(*q, s.drain_messages);
}

int64_t monotonic_us()
{
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000 + ts.tv_nsec / 1000;
}

// A child process waits in a long poll; the parent sends one message at a time, stamped with
// CLOCK_MONOTONIC (one clock for the whole machine), and the child reports how long each took
// to reach it. Each process opens the queue with `open_queue` after the fork (a database
// connection is never shared across one). Between messages it pauses `pause_ms` plus up to
// `spread_ms`, so that the receiver is truly waiting when the next one comes.
std::vector<double> wake_latencies(const std::function<std::unique_ptr<Queue>()>& open_queue,
                                   int samples, int pause_ms, int spread_ms)
{
  { auto q = open_queue(); } // create the schema before the child starts
  int fds[2];
  if (pipe(fds) != 0) throw std::runtime_error("pipe failed");
  pid_t child = fork();
  if (child == 0) {
    close(fds[0]);
    try {
      auto q = open_queue();
      int received = 0;
      while (received < samples) {
        auto got = q->receive(1, {}, 20'000);
        if (!got) _exit(3);
        for (const auto& m : *got) {
          int64_t sent_us = std::stoll(m.body);
          int64_t lat = monotonic_us() - sent_us;
          if (write(fds[1], &lat, sizeof lat) != sizeof lat) _exit(4);
          q->remove(m.receipt);
          ++received;
        }
      }
    } catch (const std::exception& e) {
      fmt::print(stderr, "acmo-bench: the receiving process: {}\n", e.what());
      _exit(5);
    }
    _exit(0);
  }
  close(fds[1]);
  auto q = open_queue();
  std::vector<double> out;
  std::this_thread::sleep_for(std::chrono::milliseconds(200)); // let the child reach its poll
  for (int i = 0; i < samples; ++i) {
    SendRequest r;
    r.body = std::to_string(monotonic_us());
    r.dedup_id = fmt::format("wake-{}", i);
    if (!q->send(r)) throw std::runtime_error("send failed");
    int64_t lat = 0;
    if (read(fds[0], &lat, sizeof lat) != sizeof lat) throw std::runtime_error("child died");
    out.push_back(static_cast<double>(lat) / 1000.0);
    std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms + (i * 7) % spread_ms));
  }
  int status = 0;
  waitpid(child, &status, 0);
  close(fds[0]);
  return out;
}

std::vector<double> wake_latencies(const Settings& s)
{
  RunDir dir(s.dir);
  return wake_latencies([&] { return open(dir.db(), s); }, s.wake_samples, 10, 23);
}

std::vector<double> pg_wake_latencies(const Settings& s)
{
  PgBenchSchema schema(s.pg_url);
  return wake_latencies([&] { return open_pg(s, schema); }, s.pg_wake_samples, 5, 11);
}

// RedisCache reads that hit, from one thread (with each get's latency) and from 8 at once,
// against the Redis at `url`, under a prefix of its own that it deletes afterwards.
struct CacheFigures {
  double one_thread = 0;   // gets/s
  double eight_threads = 0;
  double p50_us = 0, p99_us = 0;
};

CacheFigures cache_redis(const std::string& url)
{
  acmo::RedisCacheOptions o;
  o.url = url;
  o.prefix = fmt::format("acmo-bench-{}:", getpid());
  o.max_connections = 8;
  constexpr int k_keys = 1000;
  constexpr int k_gets_one = 20'000;
  constexpr int k_gets_each = 10'000;
  CacheFigures f;
  {
    acmo::RedisCache cache(o);
    // An order about the size acmo caches (two items).
    const std::string value =
      R"({"id":"ord_000000000000","customer_name":"Bench","customer_email":"bench@example.com",)"
      R"("items":[{"product_id":"p1","quantity":2,"unit_price":9.99},{"product_id":"p2",)"
      R"("quantity":1,"unit_price":24.5}],"total":44.48,"status":"pending",)"
      R"("created_at":"2026-11-26T00:00:00.000Z","updated_at":"2026-11-26T00:00:00.000Z","version":1})";
    for (int i = 0; i < k_keys; ++i) cache.put(acmo::order_cache_key(std::to_string(i)), value);
    std::vector<double> lat;
    lat.reserve(k_gets_one);
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < k_gets_one; ++i) {
      auto a = std::chrono::steady_clock::now();
      if (!cache.get(acmo::order_cache_key(std::to_string(i % k_keys)))) {
        throw std::runtime_error("cache_redis: a get missed: " + cache.last_error());
      }
      lat.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - a)
                      .count());
    }
    f.one_thread = k_gets_one / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    f.p50_us = percentile(lat, 50);
    f.p99_us = percentile(lat, 99);
    std::atomic<int> misses{0};
    std::vector<std::thread> threads;
    t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < k_gets_each; ++i) {
          if (!cache.get(acmo::order_cache_key(std::to_string((i * 8 + t) % k_keys)))) ++misses;
        }
      });
    }
    for (auto& th : threads) th.join();
    f.eight_threads =
      8.0 * k_gets_each / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (misses > 0) throw std::runtime_error("cache_redis: gets missed: " + cache.last_error());
    cache.clear();
  }
  // The figures the cache kept under the prefix go too.
  if (auto a = acmo::parse_redis_url(url); a && a->unix_path.empty()) {
    if (redisContext* c = redisConnect(a->host.c_str(), a->port)) {
      if (c->err == 0) {
        if (a->db != 0) freeReplyObject(redisCommand(c, "SELECT %d", a->db));
        freeReplyObject(redisCommand(c, "DEL %s", (o.prefix + "~stats").c_str()));
      }
      redisFree(c);
    }
  }
  return f;
}

bool wanted(const Settings& s, const std::string& name)
{
  return s.only.empty() || std::find(s.only.begin(), s.only.end(), name) != s.only.end();
}

// The HTTP scenarios (issue 5): bench/http_bench.sh runs wrk, a second process, against
// `acmo serve` on loopback, `runs` times; its JSON document is returned as it is. Its progress
// goes to stderr. A failure (wrk missing, the server not answering) is returned as {"error"}.
json http_bench(const Settings& s)
{
  const std::string command = fmt::format("bash '{}' --runs {} --duration {} '{}'", ACMO_HTTP_BENCH,
                                          s.runs, s.http_duration, ACMO_BINARY);
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return {{"error", "cannot start bench/http_bench.sh"}};
  std::string out;
  char buf[4096];
  size_t n = 0;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  const int status = pclose(pipe);
  if (status != 0) {
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : status;
    return {{"error", fmt::format("bench/http_bench.sh failed (exit status {}); its messages "
                                  "are above",
                                  code)}};
  }
  json doc = json::parse(out, nullptr, false);
  if (doc.is_discarded()) return {{"error", "bench/http_bench.sh printed no JSON document"}};
  return doc;
}

json rate_entry(const std::vector<double>& runs, double target)
{
  double med = median(runs);
  json e = {{"unit", "messages/s"}, {"runs", runs}, {"median", med}};
  if (target > 0) {
    e["target"] = target;
    e["met"] = med >= target;
  }
  return e;
}

// A wake-up scenario's entry: the runs' percentiles in ms, their medians and the targets.
json wakeup_entry(int samples, const std::vector<double>& p50s, const std::vector<double>& p99s,
                  const std::vector<double>& maxes, int target_p50, int target_p99)
{
  return {{"unit", "ms"},
          {"samples_per_run", samples},
          {"p50_runs", p50s},
          {"p99_runs", p99s},
          {"max_runs", maxes},
          {"p50_median", median(p50s)},
          {"p99_median", median(p99s)},
          {"target_p50", target_p50},
          {"target_p99", target_p99},
          {"met", median(p50s) <= target_p50 && median(p99s) <= target_p99}};
}

} // namespace

int main(int argc, char** argv)
{
  Settings s;
  s.dir = std::filesystem::temp_directory_path().string();
  CLI::App app{"acmo-bench: measure the acmo queue engine; prints JSON"};
  app.add_option("--runs", s.runs, "Repetitions of each scenario (the median is reported)");
  app.add_option("--dir", s.dir, "Directory for the benchmark databases (on the disk to measure)");
  app.add_option("--bulk-messages", s.bulk_messages, "Messages in the bulk-send scenario");
  app.add_option("--threads", s.threads, "Sender threads in the concurrent-send scenario");
  app.add_option("--per-thread", s.per_thread, "Messages each sender thread sends");
  app.add_option("--drain-messages", s.drain_messages, "Messages in the receive+delete scenario");
  app.add_option("--wake-samples", s.wake_samples, "Messages in the cross-process wake-up scenario");
  app.add_option("--pipeline-events", s.pipeline_events, "Events in the end-to-end scenarios");
  app.add_option("--only", s.only,
                 "Run only these scenarios: baseline, bulk_send, concurrent_send, "
                 "receive_delete, receive_delete_groups, receive_delete_combined, "
                 "receive_delete_combined_groups, pipeline, wakeup, cache_redis (needs "
                 "ACMO_BENCH_REDIS_URL), pipeline_pg, pg_baseline, pg_send_concurrent, "
                 "pg_send_bulk, pg_send_bulk_groups, pg_send_file, pg_send_file_groups, "
                 "pg_receive_delete, pg_end_to_end, "
                 "pg_wakeup (need ACMO_BENCH_PG_URL; the pg_ ones run with pg_baseline), http "
                 "(wrk against acmo serve, after the others)");
  app.add_option("--http-duration", s.http_duration,
                 "Seconds of each wrk run in the http scenarios");
  app.add_option("--pg-per-connection", s.pg_per_connection,
                 "PostgreSQL: rows each baseline connection inserts, and messages each thread "
                 "of pg_send_concurrent sends");
  app.add_option("--pg-bulk-messages", s.pg_bulk_messages,
                 "Messages in pg_send_bulk and pg_send_bulk_groups");
  app.add_option("--pg-file-lines", s.pg_file_lines,
                 "Lines of the file of pg_send_file and pg_send_file_groups");
  app.add_option("--pg-drain-messages", s.pg_drain_messages, "Messages in pg_receive_delete");
  app.add_option("--pg-events", s.pg_events, "Events in each pg_end_to_end run");
  app.add_option("--pg-wake-samples", s.pg_wake_samples, "Messages in pg_wakeup");
  bool normal = false;
  app.add_flag("--normal", normal, "Use queue.durability = \"normal\" instead of \"full\"");
  CLI11_PARSE(app, argc, argv);
  s.durable_full = !normal;

  static const std::vector<std::string> k_scenarios = {
    "baseline", "bulk_send", "concurrent_send", "receive_delete", "receive_delete_groups",
    "receive_delete_combined", "receive_delete_combined_groups", "pipeline", "wakeup",
    "cache_redis", "pipeline_pg", "pg_baseline", "pg_send_concurrent", "pg_send_bulk",
    "pg_send_bulk_groups", "pg_send_file", "pg_send_file_groups", "pg_receive_delete",
    "pg_end_to_end", "pg_wakeup", "http"};
  const char* redis_url = std::getenv("ACMO_BENCH_REDIS_URL");
  if (const char* pg_url = std::getenv("ACMO_BENCH_PG_URL")) s.pg_url = pg_url;
  for (const auto& name : s.only) {
    if (std::find(k_scenarios.begin(), k_scenarios.end(), name) == k_scenarios.end()) {
      std::string known;
      for (const auto& k : k_scenarios) known += (known.empty() ? "" : ", ") + k;
      fmt::print(stderr, "acmo-bench: error: --only: no scenario \"{}\"; the scenarios are {}\n",
                 name, known);
      return k_exit_usage;
    }
    // A scenario asked for by name runs, or the command fails: never a report without it.
    const bool pg = name.rfind("pg_", 0) == 0 || name == "pipeline_pg";
    if (pg && s.pg_url.empty()) {
      fmt::print(stderr, "acmo-bench: error: --only {} needs ACMO_BENCH_PG_URL, the URL of a "
                         "PostgreSQL database to measure in (e.g. "
                         "postgresql://acmo@127.0.0.1:25432/acmo_test)\n",
                 name);
      return k_exit_usage;
    }
    if (name == "cache_redis" && (redis_url == nullptr || *redis_url == '\0')) {
      fmt::print(stderr, "acmo-bench: error: --only cache_redis needs ACMO_BENCH_REDIS_URL, the "
                         "URL of a Redis server (e.g. redis://127.0.0.1:26379)\n");
      return k_exit_usage;
    }
  }
  const auto pg_wanted = [&](const std::string& name) {
    return !s.pg_url.empty() && wanted(s, name);
  };
  // The PostgreSQL queue's baseline runs with any of its scenarios.
  const bool pg_queue_wanted =
    !s.pg_url.empty()
    && (s.only.empty() || std::any_of(s.only.begin(), s.only.end(), [](const std::string& n) {
          return n.rfind("pg_", 0) == 0;
        }));

  json report = {{"durability", s.durable_full ? "full" : "normal"},
                 {"cores", std::thread::hardware_concurrency()},
                 {"runs", s.runs}};
  try {
    std::vector<double> fsync_each, batched, bulk, concurrent, drain, drain_groups, combined,
      combined_groups, wake_p50, wake_p99, wake_max, pipe_single, pipe_order, pipe_single_100,
      pipe_order_100, cache_one, cache_eight, cache_p50, cache_p99, pg_single, pg_order,
      pg_single_1000, pg_order_1000, pg_single_10, pg_order_10, pgq_baseline, pgq_concurrent,
      pgq_bulk, pgq_bulk_groups, pgq_file, pgq_file_groups, pgq_file_groups_empty, pgq_wake_p50,
      pgq_wake_p99, pgq_wake_max;
    // The end-to-end runs: processes of one worker each (the default), one process of two, and
    // one process of one worker on an orders table analyzed while empty.
    struct Deployment {
      int processes;
      int workers;
      bool analyzed_empty;
    };
    constexpr int k_deployments = 5;
    const Deployment k_pg_deployments[k_deployments] = {
      {1, 1, false}, {2, 1, false}, {4, 1, false}, {1, 2, false}, {1, 1, true}};
    // Receivers of pg_receive_delete: one, and several sharing the queue as the threads of an
    // acmo serve do when several consumers receive.
    const int k_receivers[3] = {1, 2, 4};
    std::vector<double> pgq_drain[3];
    std::vector<double> pgq_drain_after_idle;
    std::vector<double> pgq_end_to_end[k_deployments];
    std::vector<double> pgq_handler_start;
    for (int run = 0; run < s.runs; ++run) {
      if (wanted(s, "cache_redis") && redis_url != nullptr && *redis_url != '\0') {
        auto f = cache_redis(redis_url);
        cache_one.push_back(f.one_thread);
        cache_eight.push_back(f.eight_threads);
        cache_p50.push_back(f.p50_us);
        cache_p99.push_back(f.p99_us);
      }
      if (wanted(s, "baseline")) {
        RunDir a(s.dir), b(s.dir);
        fsync_each.push_back(raw_sqlite_inserts(a.db(), 2'000, 1));
        batched.push_back(raw_sqlite_inserts(b.db(), 200'000, 1'000));
      }
      if (wanted(s, "bulk_send")) bulk.push_back(bulk_send(s));
      if (wanted(s, "concurrent_send")) concurrent.push_back(concurrent_send(s));
      if (wanted(s, "receive_delete")) drain.push_back(receive_delete(s, 1));
      if (wanted(s, "receive_delete_groups")) drain_groups.push_back(receive_delete(s, 1000));
      if (wanted(s, "receive_delete_combined")) combined.push_back(receive_delete_combined(s, 1));
      if (wanted(s, "receive_delete_combined_groups")) {
        combined_groups.push_back(receive_delete_combined(s, 1000));
      }
      const std::string& pg_url = s.pg_url;
      if (pg_wanted("pipeline_pg")) {
        pg_single.push_back(pipeline(s, false, 1, 100, pg_url));
        pg_order.push_back(pipeline(s, true, 2, 100, pg_url));
        // A batch is one PostgreSQL transaction: its round trips, planning and commit flush
        // are paid per batch, so larger batches (handler.batch_size, up to 1,000) amortise them.
        pg_single_1000.push_back(pipeline(s, false, 1, 1000, pg_url));
        pg_order_1000.push_back(pipeline(s, true, 2, 1000, pg_url));
        // And batches of 10 (the most an SQS receive returns; handler.batch_size was 10 by
        // default until it became 100), as the embedded scenarios measure them too.
        pg_single_10.push_back(pipeline(s, false, 1, 10, pg_url));
        pg_order_10.push_back(pipeline(s, true, 2, 10, pg_url));
      }
      if (wanted(s, "pipeline")) {
        pipe_single.push_back(pipeline(s, false, 1, 10));
        pipe_order.push_back(pipeline(s, true, 2, 10));
        pipe_single_100.push_back(pipeline(s, false, 1, 100));
        pipe_order_100.push_back(pipeline(s, true, 2, 100));
      }
      if (wanted(s, "wakeup")) {
        auto lat = wake_latencies(s);
        wake_p50.push_back(percentile(lat, 50));
        wake_p99.push_back(percentile(lat, 99));
        wake_max.push_back(percentile(lat, 100));
      }
      if (pg_queue_wanted) pgq_baseline.push_back(pg_baseline(s));
      if (pg_wanted("pg_send_concurrent")) pgq_concurrent.push_back(pg_send_concurrent(s));
      if (pg_wanted("pg_send_bulk")) pgq_bulk.push_back(pg_send_bulk(s, 1));
      if (pg_wanted("pg_send_bulk_groups")) pgq_bulk_groups.push_back(pg_send_bulk(s, 0));
      if (pg_wanted("pg_send_file")) pgq_file.push_back(pg_send_file(s, false));
      if (pg_wanted("pg_send_file_groups")) {
        pgq_file_groups.push_back(pg_send_file(s, true));
        pgq_file_groups_empty.push_back(pg_send_file(s, true, true));
      }
      if (pg_wanted("pg_receive_delete")) {
        for (int i = 0; i < 3; ++i) pgq_drain[i].push_back(pg_receive_delete(s, k_receivers[i]));
        pgq_drain_after_idle.push_back(pg_receive_delete(s, 1, true));
      }
      if (pg_wanted("pg_end_to_end")) {
        for (int i = 0; i < k_deployments; ++i) {
          const Deployment& d = k_pg_deployments[i];
          auto e = pg_end_to_end(s, d.processes, d.workers, d.analyzed_empty);
          pgq_end_to_end[i].push_back(e.rate);
          pgq_handler_start.push_back(e.start_seconds);
        }
      }
      if (pg_wanted("pg_wakeup")) {
        auto lat = pg_wake_latencies(s);
        pgq_wake_p50.push_back(percentile(lat, 50));
        pgq_wake_p99.push_back(percentile(lat, 99));
        pgq_wake_max.push_back(percentile(lat, 100));
      }
    }
    json results = json::object();
    if (!fsync_each.empty()) {
      results["baseline_sqlite_fsync_per_insert"] = rate_entry(fsync_each, 0);
      results["baseline_sqlite_1000_per_commit"] = rate_entry(batched, 0);
    }
    auto ratio = [&](json& entry, const std::vector<double>& base, const char* name) {
      if (!base.empty()) entry["ratio_to_" + std::string(name)] = entry["median"].get<double>() / median(base);
    };
    if (!bulk.empty()) {
      results["bulk_send"] = rate_entry(bulk, 100'000);
      results["bulk_send"]["messages"] = s.bulk_messages;
      ratio(results["bulk_send"], batched, "baseline_sqlite_1000_per_commit");
    }
    if (!concurrent.empty()) {
      results["concurrent_send"] = rate_entry(concurrent, 30'000);
      results["concurrent_send"]["threads"] = s.threads;
      results["concurrent_send"]["messages"] = s.threads * s.per_thread;
      ratio(results["concurrent_send"], fsync_each, "baseline_sqlite_fsync_per_insert");
    }
    if (!drain.empty()) {
      results["receive_delete_batch10"] = rate_entry(drain, 50'000);
      results["receive_delete_batch10"]["groups"] = 1;
    }
    if (!drain_groups.empty()) {
      results["receive_delete_batch10_1000_groups"] = rate_entry(drain_groups, 50'000);
      results["receive_delete_batch10_1000_groups"]["groups"] = 1000;
    }
    if (!combined.empty()) {
      results["receive_delete_batch10_combined"] = rate_entry(combined, 50'000);
      results["receive_delete_batch10_combined"]["groups"] = 1;
      ratio(results["receive_delete_batch10_combined"], drain, "receive_delete_batch10");
    }
    if (!combined_groups.empty()) {
      results["receive_delete_batch10_combined_1000_groups"] = rate_entry(combined_groups, 50'000);
      results["receive_delete_batch10_combined_1000_groups"]["groups"] = 1000;
    }
    if (!pipe_single.empty()) {
      auto entry = [&](const std::vector<double>& runs, const char* groups, int concurrency,
                       int batch) {
        json e = rate_entry(runs, 50'000);
        e["unit"] = "events/s";
        e["store"] = "sqlite";
        e["groups"] = groups;
        e["concurrency"] = concurrency;
        e["batch_size"] = batch;
        e["events"] = s.pipeline_events;
        return e;
      };
      results["pipeline_sqlite_single_group_batch10"] = entry(pipe_single, "orders", 1, 10);
      results["pipeline_sqlite_group_per_order_batch10"] = entry(pipe_order, "per order", 2, 10);
      results["pipeline_sqlite_single_group_batch100"] = entry(pipe_single_100, "orders", 1, 100);
      results["pipeline_sqlite_group_per_order_batch100"] =
        entry(pipe_order_100, "per order", 2, 100);
    }
    if (!pg_single.empty()) {
      auto entry = [&](const std::vector<double>& runs, const char* groups, int concurrency,
                       int batch) {
        json e = rate_entry(runs, 10'000);
        e["unit"] = "events/s";
        e["store"] = "postgres";
        e["groups"] = groups;
        e["concurrency"] = concurrency;
        e["batch_size"] = batch;
        e["events"] = s.pipeline_events;
        return e;
      };
      results["pipeline_postgres_single_group_batch10"] = entry(pg_single_10, "orders", 1, 10);
      results["pipeline_postgres_group_per_order_batch10"] = entry(pg_order_10, "per order", 2, 10);
      results["pipeline_postgres_single_group_batch100"] = entry(pg_single, "orders", 1, 100);
      results["pipeline_postgres_group_per_order_batch100"] = entry(pg_order, "per order", 2, 100);
      results["pipeline_postgres_single_group_batch1000"] = entry(pg_single_1000, "orders", 1, 1000);
      results["pipeline_postgres_group_per_order_batch1000"] =
        entry(pg_order_1000, "per order", 2, 1000);
    }
    if (!wake_p50.empty()) {
      results["cross_process_wakeup"] =
        wakeup_entry(s.wake_samples, wake_p50, wake_p99, wake_max, 20, 50);
    }
    if (!pgq_baseline.empty()) {
      const char* base = "baseline_pg_insert_per_commit";
      results[base] = rate_entry(pgq_baseline, 0);
      results[base]["unit"] = "rows/s";
      results[base]["connections"] = s.threads;
      auto pg_entry = [&](const char* name, const std::vector<double>& runs, double target) {
        if (runs.empty()) return;
        results[name] = rate_entry(runs, target);
        ratio(results[name], pgq_baseline, base);
      };
      pg_entry("pg_send_concurrent", pgq_concurrent, 10'000);
      if (!pgq_concurrent.empty()) {
        // The second target: at least twice the baseline.
        json& e = results["pg_send_concurrent"];
        e["threads"] = s.threads;
        e["messages"] = s.threads * s.pg_per_connection;
        e["target_ratio"] = 2.0;
        e["met"] = e["met"].get<bool>() && e["ratio_to_" + std::string(base)].get<double>() >= 2.0;
      }
      pg_entry("pg_send_bulk", pgq_bulk, 50'000);
      if (!pgq_bulk.empty()) results["pg_send_bulk"]["messages"] = s.pg_bulk_messages;
      pg_entry("pg_send_bulk_groups", pgq_bulk_groups, 50'000);
      if (!pgq_bulk_groups.empty()) {
        results["pg_send_bulk_groups"]["messages"] = s.pg_bulk_messages;
        results["pg_send_bulk_groups"]["groups"] = "per message";
      }
      pg_entry("pg_send_file", pgq_file, 50'000);
      if (!pgq_file.empty()) results["pg_send_file"]["lines"] = s.pg_file_lines;
      pg_entry("pg_send_file_groups", pgq_file_groups, 50'000);
      if (!pgq_file_groups.empty()) {
        results["pg_send_file_groups"]["lines"] = s.pg_file_lines;
        results["pg_send_file_groups"]["groups"] = "per order";
      }
      pg_entry("pg_send_file_groups_analyzed_empty", pgq_file_groups_empty, 50'000);
      if (!pgq_file_groups_empty.empty()) {
        results["pg_send_file_groups_analyzed_empty"]["lines"] = s.pg_file_lines;
        results["pg_send_file_groups_analyzed_empty"]["groups"] = "per order";
        results["pg_send_file_groups_analyzed_empty"]["queue_analyzed_empty"] = true;
      }
      const auto drain_entry = [&](const std::string& name, const std::vector<double>& runs,
                                   int receivers) {
        pg_entry(name.c_str(), runs, 20'000);
        if (runs.empty()) return false;
        results[name]["receivers"] = receivers;
        results[name]["messages"] = s.pg_drain_messages;
        results[name]["groups"] = 1000;
        results[name]["batch_size"] = 10;
        return true;
      };
      for (int i = 0; i < 3; ++i) {
        const int n = k_receivers[i];
        drain_entry(n == 1 ? "pg_receive_delete" : fmt::format("pg_receive_delete_{}_receivers", n),
                    pgq_drain[i], n);
      }
      if (drain_entry("pg_receive_delete_after_idle", pgq_drain_after_idle, 1)) {
        results["pg_receive_delete_after_idle"]["received_while_empty"] = true;
      }
      for (int i = 0; i < k_deployments; ++i) {
        const int n = k_pg_deployments[i].processes;
        const int w = k_pg_deployments[i].workers;
        const std::string name =
          fmt::format("pg_end_to_end_{}_process{}{}{}", n, n == 1 ? "" : "es",
                      w == 1 ? "" : fmt::format("_{}_workers", w),
                      k_pg_deployments[i].analyzed_empty ? "_analyzed_empty" : "");
        pg_entry(name.c_str(), pgq_end_to_end[i], 15'000);
        if (pgq_end_to_end[i].empty()) continue;
        results[name]["unit"] = "events/s";
        results[name]["processes"] = n;
        results[name]["workers_per_process"] = w;
        results[name]["events"] = s.pg_events;
        results[name]["groups"] = "per order";
        if (k_pg_deployments[i].analyzed_empty) results[name]["orders_analyzed_empty"] = true;
      }
      if (!pgq_handler_start.empty()) {
        // What each end-to-end rate includes of starting its processes: one acmo run-handler
        // --once connecting, opening the queue and the store, and exiting, on the emptied queue.
        results["pg_handler_start"] = {{"unit", "seconds"},
                                       {"median", median(pgq_handler_start)},
                                       {"runs", pgq_handler_start}};
      }
      if (!pgq_wake_p50.empty()) {
        results["pg_wakeup"] =
          wakeup_entry(s.pg_wake_samples, pgq_wake_p50, pgq_wake_p99, pgq_wake_max, 10, 50);
      }
    }
    if (!cache_one.empty()) {
      results["cache_redis_get_hit"] = {{"unit", "gets/s"},
                                        {"runs_1_thread", cache_one},
                                        {"runs_8_threads", cache_eight},
                                        {"median_1_thread", median(cache_one)},
                                        {"median_8_threads", median(cache_eight)},
                                        {"latency_p50_us_1_thread", median(cache_p50)},
                                        {"latency_p99_us_1_thread", median(cache_p99)}};
    }
    if (wanted(s, "http")) results["http"] = http_bench(s);
    report["results"] = results;
  } catch (const std::exception& e) {
    fmt::print(stderr, "acmo-bench: error: {}\n", e.what());
    return 1;
  }
  fmt::print("{}\n", report.dump(2));
  const json& results = report["results"];
  if (results.contains("http") && results["http"].contains("error")) {
    fmt::print(stderr, "acmo-bench: error: http: {}\n", results["http"]["error"].get<std::string>());
    return 1;
  }
  return 0;
}
