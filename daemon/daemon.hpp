// Daemon mode for the long-running commands (run-handler, serve; docs/operations.md §2): detach from
// the terminal, keep a pid file, log to a file and reopen it on SIGHUP. Foreground is the
// default (systemd-friendly, logs on stderr); these are only used with --daemon.
#pragma once

#include <string>
#include <string_view>

#include "core/util/error.hpp"

namespace acmo::daemon {

// In a pid file's name, this is replaced by the daemon's pid ("acmo-run-handler.{pid}.pid").
inline constexpr std::string_view k_pid_placeholder = "{pid}";

struct DaemonOptions {
  std::string pid_file; // made absolute before the daemon leaves the current directory
  std::string log_file;
};

// Detach: the calling process forks and waits until the daemon says it is up (ready()), then
// prints "started" and exits 0, or prints why it is not (failed(), or the daemon died) and
// exits 1; it never returns. The daemon is in a session of its own, in "/", with stdin on
// /dev/null and stdout and stderr appended to the log file, and holds a lock on its pid file
// for as long as it lives, so a second daemon with the same pid file is refused. Returns in
// the daemon only. Call it before any thread is started.
Expected<void> detach(const DaemonOptions& options, std::string_view what);

// Tell the waiting parent that the daemon is running; a `note` (e.g. "the store does not
// answer yet; retrying") is printed by the parent as a warning.
void ready(std::string_view note = {});
// Tell the waiting parent why the daemon could not start (no-op when nobody is waiting).
void failed(std::string_view message);

// Tell systemd of a change of state ("READY=1", "STOPPING=1", "STATUS=..."; sd_notify(3)) when
// it started us with $NOTIFY_SOCKET (Type=notify); no-op otherwise. Best effort: a message
// that cannot be sent is dropped.
void notify_systemd(std::string_view state);

// Point stdout and stderr at the log file again (after SIGHUP, when logrotate moved it). No-op
// outside daemon mode.
Expected<void> reopen_log();

// Whether this process is a daemon started by detach().
bool is_daemon();

// Remove the pid file if this process still owns it (at a clean exit).
void remove_pid_file();

// The pid in a pid file, if a live process holds it; 0 otherwise.
int running_pid(const std::string& pid_file);

} // namespace acmo::daemon
