// acmo demo: a narrated walk through the whole pipeline. It starts the
// OrderHandler, sends CREATE, UPDATE and DELETE events, shows the queue while they are
// processed, then the processing, the resulting orders and their audit trail, and stops the
// handler. Every step checks that it did what it says; the exit code is 0 only if all did.
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/output.hpp"
#include "core/cache/cached_orders.hpp"
#include "core/config/backends.hpp"
#include "core/handler/handler_registry.hpp"
#include "core/handler/order_handler.hpp"
#include "core/orders/order_event.hpp"
#include "core/orders/submit.hpp"
#include "core/util/ids.hpp"
#include "core/util/log.hpp"
#include "core/util/paths.hpp"

namespace acmo::cli {

namespace {

struct DemoOptions {
  bool keep = false;
  int64_t timeout_s = 20;
};

// The narration, and the record of what each step checked.
class Narrator
{
public:
  explicit Narrator(const GlobalOptions& global) : m_global(global) {}

  void step(const std::string& title)
  {
    ++m_step;
    m_steps.push_back({{"step", m_step}, {"title", title}, {"checks", nlohmann::json::array()}});
    if (!quiet()) {
      const bool bold = use_colour();
      fmt::print("\n{}{}. {}{}\n", bold ? "\033[1m" : "", m_step, title, bold ? "\033[0m" : "");
    }
  }
  void say(const std::string& line)
  {
    if (!quiet()) fmt::print("   {}\n", line);
  }
  // A claim the step made; false is a failure of the demo.
  bool check(bool ok, const std::string& what)
  {
    if (!ok) ++m_failures;
    m_steps.back()["checks"].push_back({{"check", what}, {"ok", ok}});
    if (!quiet() || !ok) {
      const bool colour = use_colour();
      const char* mark = ok ? (colour ? "\033[32m✓\033[0m" : "ok") : (colour ? "\033[31m✗\033[0m" : "FAILED");
      fmt::print(ok ? stdout : stderr, "   {} {}\n", mark, what);
    }
    return ok;
  }
  int failures() const { return m_failures; }
  const nlohmann::json& steps() const { return m_steps; }

private:
  bool quiet() const { return m_global.json || m_global.quiet; }
  const GlobalOptions& m_global;
  int m_step = 0;
  int m_failures = 0;
  nlohmann::json m_steps = nlohmann::json::array();
};

// A temporary data dir, removed at the end unless kept.
std::string make_temp_dir()
{
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = fmt::format("{}/acmo-demo.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw Fatal(fmt::format("cannot create a temporary directory under {}; set TMPDIR or pass "
                            "--data-dir",
                            tmp && *tmp ? tmp : "/tmp"));
  }
  return pattern;
}

int run_demo(const DemoOptions& opts, const GlobalOptions& global_in)
{
  GlobalOptions global = global_in;
  global.embedded = true;
  const bool temporary = global.data_dir.empty();
  if (!temporary) {
    // A directory of the user's own: the demo would apply (or dead-letter) the events waiting
    // there and leave its orders among theirs.
    std::error_code ec;
    if (std::filesystem::exists(database_path(global.data_dir), ec)) {
      throw Fatal(fmt::format("{} holds an acmo queue already, and the demo would take its "
                              "waiting events; give --data-dir a new or empty directory, or "
                              "leave it out for a temporary one",
                              global.data_dir),
                  exit_code::k_usage);
    }
  } else {
    global.data_dir = make_temp_dir();
  }
  struct Cleanup {
    std::string dir;
    ~Cleanup()
    {
      std::error_code ec;
      if (!dir.empty()) std::filesystem::remove_all(dir, ec);
    }
  } cleanup{temporary && !opts.keep ? global.data_dir : std::string()};

  Narrator n(global);
  const Config& cfg = config(global);
  // The narration says what is dead-lettered and why; the log's line for it would repeat it.
  log::configure("error", cfg.settings().log.format);
  if (!global.json && !global.quiet) {
    fmt::print("acmo demo: order events through the queue to the orders, step by step.\n");
    fmt::print("Data dir: {}{}\n", data_dir(global),
               temporary ? (opts.keep ? " (temporary, kept)" : " (temporary, removed at the end)")
                         : "");
  }

  // 1. The handler.
  n.step("Start the OrderHandler");
  auto queue = open_queue(global);
  auto writer = open_order_writer(cfg);
  if (!writer) throw Fatal(writer.error());
  auto cache = open_cache(cfg);
  HandlerOptions hopts = handler_options_from(cfg);
  hopts.writer = writer->get();
  hopts.cache = cache.get();
  hopts.wait_ms = 200;
  const std::string db = database_path(data_dir(global));
  OrderHandler handler(*queue, db, hopts);
  Expected<HandlerStats> handler_result = HandlerStats{};
  std::thread handler_thread([&] { handler_result = handler.run(); });
  bool registered = false;
  for (int i = 0; i < 100 && !registered; ++i) {
    const int64_t now = queue->now_ms();
    if (auto list = list_handlers(*queue, now)) {
      for (const auto& h : *list) registered |= h.state(now) == "running";
    }
    if (!registered) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  n.say(fmt::format("queue \"{}\", store {}, cache {}, {} worker(s), batches of {}",
                    queue->options().name, cfg.settings().store.backend,
                    cfg.settings().cache.backend, hopts.concurrency, hopts.batch_size));
  n.check(registered, "the handler is running and registered in the data dir");

  // 2. Send events.
  n.step("Send order events: three CREATEs, four UPDATEs and a DELETE");
  const std::string group_by = cfg.settings().group_by;
  int sent = 0;
  auto send = [&](EventType type, const std::string& order_id, nlohmann::json data,
                  const std::string& dedup_id) -> Expected<std::pair<SendResult, OrderEvent>> {
    OrderEvent e;
    e.type = type;
    e.order_id = order_id;
    e.data = std::move(data);
    e.dedup_id = dedup_id;
    if (auto ok = validate_event_data(e.type, e.data); !ok) return Unexpected(ok.error());
    complete_event(e, group_by);
    auto r = queue->send(to_send_request(e));
    if (!r) return Unexpected(r.error());
    n.say(fmt::format("{} {:<8} {:<32} sequence {}{}", r->duplicate ? "duplicate" : "queued",
                      event_type_name(e.type), e.order_id, format_sequence(r->seq),
                      r->duplicate ? " (not queued again)" : ""));
    if (!r->duplicate) ++sent;
    return std::make_pair(*r, e);
  };
  const std::string run_id = std::to_string(::getpid()) + "-" +
                             std::to_string(SystemClock::instance().now_ms());
  struct Customer {
    const char* name;
    const char* email;
    nlohmann::json items;
  };
  const Customer customers[] = {
    {"Ada Lovelace", "ada@example.com",
     {{{"product_id", "p-1"}, {"name", "Notebook"}, {"quantity", 2}, {"unit_price", 12.50}}}},
    {"Grace Hopper", "grace@example.com",
     {{{"product_id", "p-2"}, {"name", "Compiler manual"}, {"quantity", 1}, {"unit_price", 39.99}},
      {{"product_id", "p-3"}, {"name", "Pencil"}, {"quantity", 10}, {"unit_price", 0.35}}}},
    {"Linus Torvalds", "linus@example.com",
     {{{"product_id", "p-4"}, {"name", "Penguin"}, {"quantity", 1}, {"unit_price", 5}}}},
  };
  std::vector<std::string> ids;
  bool sends_ok = true;
  for (const auto& c : customers) {
    auto r = send(EventType::create, "",
                  {{"customer_name", c.name}, {"customer_email", c.email}, {"items", c.items}},
                  "demo-create-" + std::string(c.email) + "-" + run_id);
    if (!r) {
      n.say(r.error().message);
      sends_ok = false;
      continue;
    }
    ids.push_back(r->second.order_id);
  }
  if (!n.check(sends_ok && ids.size() == 3, "three CREATE events queued")) return exit_code::k_failure;
  const std::string ship_dedup = "demo-ship-" + run_id;
  for (auto [id, status, dedup] : {std::tuple{ids[0], "processing", std::string()},
                                   std::tuple{ids[0], "shipped", ship_dedup},
                                   std::tuple{ids[1], "processing", std::string()},
                                   std::tuple{ids[1], "cancelled", std::string()}}) {
    auto r = send(EventType::update, id, {{"status", status}}, dedup);
    sends_ok &= r && !r->first.duplicate;
  }
  auto removed = send(EventType::remove, ids[2], nlohmann::json::object(), "");
  sends_ok &= removed && !removed->first.duplicate;
  n.check(sends_ok, "four UPDATEs and a DELETE queued, each acknowledged durably");

  // 3. The queue while the handler works.
  n.step("The queue while the handler works");
  const int64_t expected_applied = 8; // the three CREATEs, four UPDATEs and the DELETE
  if (auto s = queue->stats()) {
    const int64_t applied = handler.stats().processed;
    n.say(fmt::format("right after sending: {} visible, {} in flight; sent {}, deleted {}; the "
                      "handler has applied {} of {}",
                      s->visible, s->in_flight, s->sent, s->deleted, applied, expected_applied));
    n.say(applied >= expected_applied
            ? "it took each event as it arrived: the handler waits on the queue, and wakes when "
              "an event is committed"
            : "the rest are queued; the handler takes them in order, group by group");
    n.say("(`acmo stats` shows these figures; `acmo stats --watch` keeps them on screen)");
  }

  // 4. Duplicates and refusals.
  n.step("Send the \"shipped\" UPDATE again with the same deduplication id");
  auto again = send(EventType::update, ids[0], {{"status", "shipped"}}, ship_dedup);
  n.check(again && again->first.duplicate,
          "acknowledged as a duplicate and not queued again (SQS FIFO deduplication)");

  n.step("Send an UPDATE with a status that does not exist");
  auto bad = send(EventType::update, ids[0], {{"status", "teleported"}}, "");
  if (!bad) n.say(fmt::format("refused: {}", bad.error().message));
  n.check(!bad && bad.error().code == Errc::invalid_input && bad.error().field == "data.status",
          "refused before it reaches the queue, naming the field (exit code 4 for acmo send)");

  n.step("Send an UPDATE that breaks the status rules (cancelled → shipped)");
  auto forbidden = send(EventType::update, ids[1], {{"status", "shipped"}}, "");
  n.check(bool(forbidden), "valid on its own, so it is queued; the handler will refuse it");

  // 5. Processing.
  n.step("Wait for the handler to apply everything");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(opts.timeout_s);
  QueueStats qs;
  HandlerStats hs;
  std::string last_printed;
  for (;;) {
    auto s = queue->stats();
    if (s) qs = *s;
    hs = handler.stats();
    // A line whenever the picture changes, so the last one shows the state the checks judge.
    std::string line = fmt::format("applied {} of {}, dead-lettered {}; queue: {} visible, {} in "
                                   "flight",
                                   hs.processed, expected_applied, hs.dead_lettered, qs.visible,
                                   qs.in_flight);
    if (line != last_printed) {
      n.say(line);
      last_printed = std::move(line);
    }
    const bool drained = s && qs.visible == 0 && qs.in_flight == 0 && qs.delayed == 0;
    if ((drained && hs.processed >= expected_applied && hs.dead_lettered >= 1) ||
        std::chrono::steady_clock::now() > deadline) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  n.check(hs.processed == expected_applied,
          fmt::format("{} events applied exactly once (expected {})", hs.processed, expected_applied));
  n.check(qs.visible == 0 && qs.in_flight == 0, "the queue is empty");
  n.check(hs.dead_lettered == 1 && qs.dead_lettered == 1,
          "the forbidden change is in the dead-letter queue");
  if (auto dlq = queue->dlq_list(10); dlq && !dlq->empty()) {
    n.say(fmt::format("DLQ reason: {}", dlq->front().dead_reason));
  }
  n.say(fmt::format("handler: {} batches, apply latency p50 {} µs, p99 {} µs", hs.batches,
                    hs.latency_p50_us, hs.latency_p99_us));

  // 6. The orders.
  n.step("The orders the events made");
  auto store = open_order_store(cfg, db);
  if (!store) throw Fatal(store.error());
  CachedOrders orders(**store, cache.get());
  auto first = (*store)->get(ids[0]);
  auto second = (*store)->get(ids[1]);
  auto third = (*store)->get(ids[2]);
  for (const auto& o : {first, second}) {
    if (o) {
      n.say(fmt::format("{}  {:<15} {:<10} total {:>7}  version {}", o->id, o->customer_name,
                        o->status, money(o->total_cents), o->version));
    }
  }
  n.check(first && first->status == "shipped" && first->total_cents == 2500 && first->version == 3,
          "Ada's order is shipped, total 25.00, version 3");
  n.check(second && second->status == "cancelled" && second->total_cents == 4349,
          "Grace's order is cancelled (total 43.49), the later change refused");
  n.check(!third && third.error().code == Errc::not_found, "Linus's order is deleted");

  n.step("Read Ada's order twice through the cache");
  const CacheStats before = cache->stats();
  auto read1 = orders.get_json(ids[0]);
  auto read2 = orders.get_json(ids[0]);
  const CacheStats after = cache->stats();
  n.say(fmt::format("cache {}: {} hit(s), {} miss(es)", after.backend, after.hits - before.hits,
                    after.misses - before.misses));
  n.check(read1 && read2 && *read1 == *read2, "both reads give the same order");
  if (cfg.settings().cache.backend != "none") {
    n.check(after.hits - before.hits >= 1, "the second read is a cache hit");
  }

  n.step("Ada's audit trail: every applied event, in order");
  auto trail = orders.events(ids[0]);
  if (trail) {
    for (const auto& e : *trail) {
      n.say(fmt::format("{}  {:<6} {}", format_sequence(e.seq), e.type, e.data.dump()));
    }
  }
  n.check(trail && trail->size() == 3 && (*trail)[0].type == "CREATE" &&
            (*trail)[2].data.value("status", "") == "shipped",
          "CREATE, then processing, then shipped");

  // 7. Stop.
  n.step("Stop the OrderHandler");
  handler.stop();
  handler_thread.join();
  n.check(bool(handler_result), "the handler stopped cleanly");

  if (global.json) {
    print_json({{"dataDir", data_dir(global)},
                {"kept", !temporary || opts.keep},
                {"ok", n.failures() == 0},
                {"steps", n.steps()}});
  } else if (!global.quiet) {
    fmt::print("\n{}\n", n.failures() == 0
                           ? "Every step did what it said."
                           : fmt::format("{} check(s) failed.", n.failures()));
    if (temporary && opts.keep) {
      fmt::print("The data dir is kept: acmo --data-dir {} stats\n", data_dir(global));
    }
  }
  return n.failures() == 0 ? exit_code::k_ok : exit_code::k_failure;
}

} // namespace

Runner setup_demo(CLI::App& sub, const GlobalOptions& global)
{
  auto opts = std::make_shared<DemoOptions>();
  sub.add_flag("--keep", opts->keep,
               "Keep the temporary data dir at the end (its path is printed)");
  sub.footer("Runs in a new temporary data dir, removed at the end unless --keep, on the\n"
             "embedded queue and store and the in-process cache, whatever the configuration\n"
             "says. With --data-dir, in that dir (one without an acmo queue), left as it is.\n"
             "Exit status 0 only if every step did what it said.");
  return [opts, &global] { return run_demo(*opts, global); };
}

} // namespace acmo::cli
