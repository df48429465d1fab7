// acmo handlers [list] | stop ID... | drain ID...|--all: the handler registry, and stopping or
// draining a handler without knowing its host or pid (docs/commands.md §18).
#include <algorithm>
#include <chrono>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/output.hpp"
#include "core/handler/handler_registry.hpp"
#include "core/handler/stats_report.hpp"
#include "core/orders/order.hpp"
#include "core/util/paths.hpp"

namespace acmo::cli {

namespace {

struct HandlersOptions {
  std::vector<std::string> ids;
  bool all = false;
  double wait_s = 0; // --wait: how long to wait for the handlers to stop
  bool wait_given = false;
};

int run_list(const GlobalOptions& global)
{
  auto queue = open_existing_queue(global);
  const int64_t now = queue->now_ms(); // heartbeats are in the queue's time
  auto handlers = list_handlers(*queue, now);
  if (!handlers) return report(handlers.error());
  if (global.json) {
    print_json(handlers_json(*handlers, now));
    return exit_code::k_ok;
  }
  if (handlers->empty()) {
    if (!global.quiet) fmt::print("no handler was seen in the last hour\n");
    return exit_code::k_ok;
  }
  size_t width = 2; // "ID"
  for (const auto& h : *handlers) width = std::max(width, h.id.size());
  if (!global.quiet) {
    fmt::print("{:<{}}  {:<8}  {:>9}  {:>10}  {:>13}  {:>9}  {}\n", "ID", width, "STATE", "UP",
               "APPLIED", "DEAD-LETTERED", "LAST BEAT", "ASKED");
  }
  int64_t running = 0;
  for (const auto& h : *handlers) {
    const std::string state = h.state(now);
    running += state == "running";
    const int64_t until = h.stopped_at_ms != 0 ? h.stopped_at_ms : h.heartbeat_at_ms;
    fmt::print("{:<{}}  {:<8}  {:>9}  {:>10}  {:>13}  {:>9}  {}\n", h.id, width, state,
               age_text(std::max<int64_t>(0, until - h.started_at_ms)), h.processed,
               h.dead_lettered, age_text(std::max<int64_t>(0, now - h.heartbeat_at_ms)) + " ago",
               h.request.empty() ? "-" : h.request);
  }
  if (!global.quiet) {
    fmt::print("{} running, {} seen in the last hour\n", running, handlers->size());
  }
  return exit_code::k_ok;
}

// Ask each handler of `opts` (or, with --all, every running one) to `request` ("stop" or
// "drain"), then with --wait wait until they have stopped.
int run_request(const HandlersOptions& opts, std::string_view request, const GlobalOptions& global)
{
  if (opts.all == !opts.ids.empty()) {
    throw Fatal(fmt::format("name the handlers to {} (acmo handlers lists their ids), or --all",
                            request),
                exit_code::k_usage);
  }
  // Given: 0 to 3600 seconds (NaN fails both comparisons).
  if (opts.wait_given && !(opts.wait_s >= 0 && opts.wait_s <= 3600)) {
    throw Fatal("--wait takes 0 to 3600 seconds", exit_code::k_usage);
  }
  auto queue = open_existing_queue(global);
  std::vector<std::string> ids = opts.ids;
  if (opts.all) {
    const int64_t now = queue->now_ms(); // heartbeats are in the queue's time
    auto handlers = list_handlers(*queue, now);
    if (!handlers) return report(handlers.error());
    for (const auto& h : *handlers) {
      if (h.state(now) == "running") ids.push_back(h.id);
    }
    if (ids.empty()) {
      if (global.json) {
        print_json({{"asked", std::vector<std::string>{}},
                    {"stopped", opts.wait_given ? nlohmann::json::array() : nlohmann::json()}});
      } else if (!global.quiet) {
        fmt::print("no handler is running\n");
      }
      return exit_code::k_ok;
    }
  }
  int rc = exit_code::k_ok;
  std::vector<std::string> asked;
  for (const auto& id : ids) {
    if (auto ok = request_handler(*queue, id, request, queue->now_ms()); !ok) {
      rc = report(ok.error());
      continue;
    }
    asked.push_back(id);
    if (!global.quiet && !global.json) {
      fmt::print("asked handler {} to {}{}\n", id, request,
                 request == "stop" ? " after the batches in hand"
                                   : ": it handles what is queued, then stops");
    }
  }
  if (!opts.wait_given || asked.empty()) {
    if (global.json) print_json({{"asked", asked}, {"stopped", nullptr}});
    return rc;
  }
  // Wait for their rows to say stopped (or gone: it died meanwhile).
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(opts.wait_s * 1000));
  std::vector<std::string> stopped;
  for (;;) {
    const int64_t now = queue->now_ms();
    auto handlers = list_handlers(*queue, now);
    if (!handlers) return report(handlers.error());
    stopped.clear();
    for (const auto& h : *handlers) {
      if (std::find(asked.begin(), asked.end(), h.id) != asked.end() &&
          h.state(now) != "running") {
        stopped.push_back(h.id);
      }
    }
    if (stopped.size() == asked.size() || std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (global.json) print_json({{"asked", asked}, {"stopped", stopped}});
  if (stopped.size() < asked.size()) {
    print_error(fmt::format("{} of {} handler{} still running after {} s", asked.size() - stopped.size(),
                            asked.size(), asked.size() == 1 ? " is" : "s are", opts.wait_s));
    return exit_code::k_temporary;
  }
  if (!global.quiet && !global.json) {
    fmt::print("{} handler{} stopped\n", stopped.size(), stopped.size() == 1 ? "" : "s");
  }
  return rc;
}

} // namespace

Runner setup_handlers(CLI::App& sub, const GlobalOptions& global)
{
  auto opts = std::make_shared<HandlersOptions>();
  auto* list = sub.add_subcommand("list", "List the handlers seen in the last hour (the default)");
  const auto add_targets = [opts](CLI::App* cmd, const char* what) {
    cmd->add_option("ids", opts->ids, fmt::format("The handlers to {} (ids from acmo handlers)", what))
      ->option_text("ID...");
    cmd->add_flag("--all", opts->all, fmt::format("{} every running handler", what));
    cmd
      ->add_option_function<double>(
        "--wait",
        [opts](const double& s) {
          opts->wait_s = s;
          opts->wait_given = true;
        },
        "Wait up to SECONDS for them to stop (exit 75 if one has not)")
      ->option_text("SECONDS");
  };
  auto* stop = sub.add_subcommand(
    "stop", "Stop handlers after the batches in hand, wherever they run (as SIGTERM does)");
  add_targets(stop, "stop");
  auto* drain =
    sub.add_subcommand("drain", "Let handlers handle what is queued, then stop by themselves");
  add_targets(drain, "drain");
  return [=, &global] {
    if (stop->parsed()) return run_request(*opts, "stop", global);
    if (drain->parsed()) return run_request(*opts, "drain", global);
    (void)list;
    return run_list(global);
  };
}

} // namespace acmo::cli
