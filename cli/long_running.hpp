// What the long-running commands (run-handler, serve) share: --daemon with its pid and log
// files, the log configuration, and the signals (SIGINT and SIGTERM stop gracefully, SIGHUP
// reopens the log file; docs/commands.md §5).
#pragma once

#include <csignal>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "cli/app.hpp"

namespace CLI {
class App;
}

namespace acmo::cli {

struct DaemonFlags {
  bool daemon = false;
  std::string pid_file;
  std::string log_file;
};

void add_daemon_flags(CLI::App& sub, DaemonFlags& flags);

// Block SIGINT, SIGTERM and SIGHUP in the calling thread, and so in every thread it starts
// later: only run_until_signal's sigwait takes them. Call it before any thread is started.
sigset_t block_signals();

// Configure the log from [log]; with --daemon, detach (the calling process exits there with the
// daemon's start-up verdict), with the pid file (default DATA_DIR/acmo-COMMAND.pid, or
// acmo-COMMAND.PID.pid for run-handler, of which several may run) and the log file (log.file,
// else DATA_DIR/acmo-COMMAND.log). Call before any thread is started.
void start_long_running(const DaemonFlags& flags, const GlobalOptions& global,
                        const std::string& command);

// The command is up: a daemon's parent prints "started" and exits 0, and systemd, when it
// started us with $NOTIFY_SOCKET, hears READY=1 (with `note` as STATUS).
void announce_ready(std::string_view note = {});

// Wait `ms` for SIGINT or SIGTERM (blocked by block_signals); true if one came. For waits
// before run_until_signal starts taking them.
bool stop_signal_within(const sigset_t& signals, int64_t ms);

// Call `open` until it succeeds or fails otherwise than with a PostgreSQL server that does not
// answer (yet: everything started at boot; Errc::unavailable naming queue.url or store.url),
// waiting between tries (0.5 s, doubling up to 10 s)
// as a running process waits through an outage: it logs store_waiting once and store_ready when
// it answers, and tells systemd it is up, saying why it waits. Nothing when SIGINT or SIGTERM
// came first (the pid file is removed; the caller exits 0), else open's last result.
std::optional<Expected<void>> open_waiting(const sigset_t& signals,
                                           const std::function<Expected<void>()>& open);

// Run `body` on the calling thread while a second thread takes the signals blocked by
// block_signals: SIGINT or SIGTERM calls `stop` (which must make `body` return soon), SIGHUP
// reopens the log file. Removes the pid file when `body` returns.
void run_until_signal(const sigset_t& signals, const std::function<void()>& stop,
                      const std::function<void()>& body);

} // namespace acmo::cli
