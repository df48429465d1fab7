#include "cli/long_running.hpp"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>

#include <pthread.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/output.hpp"
#include "core/util/log.hpp"
#include "core/util/paths.hpp"
#include "daemon/daemon.hpp"

namespace acmo::cli {

void add_daemon_flags(CLI::App& sub, DaemonFlags& flags)
{
  sub.add_flag("--daemon", flags.daemon,
               "Detach from the terminal, write a pid file and log to a file (SIGHUP reopens it)");
  sub.add_option("--pid-file", flags.pid_file,
                 "With --daemon: the pid file (default: in the data dir)")
    ->option_text("FILE");
  sub.add_option("--log-file", flags.log_file,
                 "With --daemon: the log file (default: log.file, else in the data dir)")
    ->option_text("FILE");
}

sigset_t block_signals()
{
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  if (int rc = pthread_sigmask(SIG_BLOCK, &signals, nullptr); rc != 0) {
    throw Fatal(fmt::format("cannot block SIGINT, SIGTERM and SIGHUP: error {}", rc));
  }
  return signals;
}

void start_long_running(const DaemonFlags& flags, const GlobalOptions& global,
                        const std::string& command)
{
  const Config& cfg = config(global);
  const bool access = cfg.settings().log.access;
  log::configure(global.quiet ? "warn" : cfg.settings().log.level, cfg.settings().log.format,
                 access);
  log::set_long_running();
  if (!flags.daemon) {
    if (!flags.pid_file.empty() || !flags.log_file.empty()) {
      throw Fatal("--pid-file and --log-file go with --daemon; in the foreground acmo logs to "
                  "stderr",
                  exit_code::k_usage);
    }
    return;
  }
  const std::string dir = data_dir(global);
  if (auto ok = ensure_directory(dir); !ok) throw data_dir_fatal(ok.error());
  daemon::DaemonOptions options;
  options.pid_file = flags.pid_file;
  if (options.pid_file.empty()) {
    // Several handlers may run on one data dir: each gets a pid file of its own, named after
    // its pid.
    options.pid_file = command == "run-handler"
                         ? fmt::format("{}/acmo-{}.{}.pid", dir, command, daemon::k_pid_placeholder)
                         : fmt::format("{}/acmo-{}.pid", dir, command);
  }
  options.log_file = flags.log_file;
  if (options.log_file.empty()) options.log_file = cfg.settings().log.file;
  if (options.log_file.empty()) options.log_file = fmt::format("{}/acmo-{}.log", dir, command);
  if (auto ok = daemon::detach(options, command); !ok) throw Fatal(ok.error());
}

void announce_ready(std::string_view note)
{
  daemon::ready(note);
  daemon::notify_systemd(fmt::format("READY=1\nMAINPID={}\nSTATUS={}", ::getpid(),
                                     note.empty() ? "running" : note));
}

bool stop_signal_within(const sigset_t& signals, int64_t ms)
{
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(
                        deadline - std::chrono::steady_clock::now())
                        .count();
    if (left <= 0) return false;
    timespec wait{static_cast<time_t>(left / 1'000'000'000), static_cast<long>(left % 1'000'000'000)};
    siginfo_t info;
    const int sig = sigtimedwait(&signals, &info, &wait);
    if (sig == SIGINT || sig == SIGTERM) {
      daemon::notify_systemd("STOPPING=1");
      return true;
    }
    if (sig == SIGHUP) {
      if (daemon::is_daemon()) (void)daemon::reopen_log();
      continue;
    }
    if (sig < 0 && errno == EAGAIN) return false;
  }
}

std::optional<Expected<void>> open_waiting(const sigset_t& signals,
                                           const std::function<Expected<void>()>& open)
{
  // Only a PostgreSQL server that does not answer (an error naming queue.url or store.url) is
  // waited for; a local failure, such as a full disk under the SQLite file, ends the command
  // with exit 75 as before (docs/commands.md §3).
  const auto waits_for = [](const Expected<void>& r) {
    return !r && r.error().code == Errc::unavailable
           && (r.error().field == "queue.url" || r.error().field == "store.url");
  };
  Expected<void> opened = open();
  if (!waits_for(opened)) return opened;
  const std::string note = fmt::format("{}; retrying until it answers", opened.error().message);
  log::warn({"store_waiting"}, "{}", note);
  announce_ready(note);
  int64_t delay_ms = 500;
  while (waits_for(opened)) {
    if (stop_signal_within(signals, delay_ms)) {
      log::info({"stopped"}, "stopped before the store answered");
      daemon::remove_pid_file();
      return std::nullopt;
    }
    opened = open();
    delay_ms = std::min<int64_t>(delay_ms * 2, 10'000);
  }
  if (opened) log::info({"store_ready"}, "the store answers now");
  return opened;
}

void run_until_signal(const sigset_t& signals, const std::function<void()>& stop,
                      const std::function<void()>& body)
{
  std::atomic<bool> finished{false};
  std::thread waiter([&] {
    // Every signal until `body` returns is handled (stop may be asked again), so a second
    // SIGTERM during shutdown does not kill the process with work half done.
    for (;;) {
      int sig = 0;
      if (sigwait(&signals, &sig) != 0) continue;
      // Once `body` has returned, the main thread wakes us with a SIGTERM of its own.
      if (finished.load()) return;
      if (sig == SIGHUP) {
        if (!daemon::is_daemon()) continue; // in the foreground there is no log file to reopen
        if (auto ok = daemon::reopen_log(); !ok) {
          log::error({"log_reopen_failed"}, "{}", ok.error().message);
        } else {
          log::info({"log_reopened"}, "log file reopened (SIGHUP)");
        }
        continue;
      }
      log::info({"stopping"}, "{} received: stopping after the work in hand", sig == SIGINT ? "SIGINT" : "SIGTERM");
      daemon::notify_systemd("STOPPING=1\nSTATUS=stopping after the work in hand");
      stop();
    }
  });
  body();
  finished.store(true);
  pthread_kill(waiter.native_handle(), SIGTERM);
  waiter.join();
  daemon::remove_pid_file();
  // The signals stay blocked: the process is about to exit, and one that arrives now must not
  // turn a clean shutdown into a kill.
}

} // namespace acmo::cli
