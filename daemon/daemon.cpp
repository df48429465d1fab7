#include "daemon/daemon.hpp"

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include <fcntl.h>
#include <fmt/core.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace acmo::daemon {

namespace {

int g_ready_fd = -1;   // the write end of the pipe the parent waits on
int g_pid_fd = -1;     // the pid file, locked
std::string g_pid_file;
std::string g_log_file;

std::string absolute(const std::string& path)
{
  std::error_code ec;
  auto p = std::filesystem::absolute(path, ec);
  return ec ? path : p.lexically_normal().string();
}

void write_all(int fd, std::string_view text)
{
  while (!text.empty()) {
    ssize_t n = ::write(fd, text.data(), text.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    text.remove_prefix(static_cast<size_t>(n));
  }
}

Expected<int> open_log(const std::string& file)
{
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd < 0) {
    return make_error(Errc::internal, fmt::format("cannot open the log file {}: {}; check that its "
                                            "directory exists and is writable, or pass --log-file",
                                            file, std::strerror(errno)));
  }
  return fd;
}

// Lock the pid file and write our pid; refuse when another live daemon holds it.
Expected<void> take_pid_file(const std::string& file)
{
  int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    return make_error(Errc::internal, fmt::format("cannot open the pid file {}: {}; pass --pid-file "
                                            "with a writable path",
                                            file, std::strerror(errno)));
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {};
    ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    ::close(fd);
    return make_error(Errc::conflict,
                      fmt::format("another acmo daemon holds the pid file {} (pid {}); stop it "
                                  "first, or give this one its own --pid-file",
                                  file, n > 0 ? std::string(buf, strcspn(buf, "\n")) : "?"));
  }
  const std::string text = fmt::format("{}\n", ::getpid());
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, text.data(), text.size(), 0) < 0) {
    ::close(fd);
    return make_error(Errc::internal, fmt::format("cannot write the pid file {}: {}", file,
                                            std::strerror(errno)));
  }
  g_pid_fd = fd;
  g_pid_file = file;
  return {};
}

// `pid_file` with its k_pid_placeholder, if any, replaced by `pid`.
std::string with_pid(std::string pid_file, std::string_view pid)
{
  if (const size_t at = pid_file.find(k_pid_placeholder); at != std::string::npos) {
    pid_file.replace(at, k_pid_placeholder.size(), pid);
  }
  return pid_file;
}

} // namespace

int running_pid(const std::string& pid_file)
{
  int fd = ::open(pid_file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  int pid = 0;
  if (::flock(fd, LOCK_SH | LOCK_NB) != 0) { // locked: its daemon is alive
    char buf[32] = {};
    if (::pread(fd, buf, sizeof buf - 1, 0) > 0) pid = std::atoi(buf);
  }
  ::close(fd);
  return pid;
}


Expected<void> detach(const DaemonOptions& options, std::string_view what)
{
  const std::string pid_file = absolute(options.pid_file);
  const std::string log_file = absolute(options.log_file);
  // Check what can be checked while the user still sees the answer.
  if (int pid = running_pid(pid_file); pid != 0) {
    return make_error(Errc::conflict,
                      fmt::format("acmo {} is already running as pid {} (pid file {}); stop it "
                                  "first, or give this one its own --pid-file",
                                  what, pid, pid_file));
  }
  auto log_fd = open_log(log_file);
  if (!log_fd) return Unexpected(log_fd.error());

  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    return make_error(Errc::internal, fmt::format("cannot create a pipe: {}", std::strerror(errno)));
  }
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t child = ::fork();
  if (child < 0) return make_error(Errc::internal, fmt::format("cannot fork: {}", std::strerror(errno)));
  if (child > 0) {
    // The parent: wait for the daemon's word.
    ::close(fds[1]);
    std::string said;
    char buf[512];
    for (;;) {
      ssize_t n = ::read(fds[0], buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      said.append(buf, static_cast<size_t>(n));
    }
    int status = 0;
    ::waitpid(child, &status, 0); // the intermediate child, which exits at once
    if (said.rfind("ok ", 0) == 0) {
      const size_t newline = said.find('\n');
      const std::string pid = said.substr(3, newline == std::string::npos ? std::string::npos
                                                                          : newline - 3);
      std::fprintf(stdout, "acmo %.*s started as pid %s; log %s, pid file %s\n",
                   static_cast<int>(what.size()), what.data(), pid.c_str(), log_file.c_str(),
                   with_pid(pid_file, pid).c_str());
      if (newline != std::string::npos) {
        std::fprintf(stderr, "acmo: warning: %s\n", said.substr(newline + 1).c_str());
      }
      std::exit(0);
    }
    if (said.empty()) {
      said = fmt::format("the daemon exited during start-up; see the log {}", log_file);
    }
    std::fprintf(stderr, "acmo: error: %s\n", said.c_str());
    std::exit(1);
  }

  // The intermediate child: a session of its own, then fork again so that the daemon is not a
  // session leader and can never get a controlling terminal.
  ::close(fds[0]);
  ::setsid();
  const pid_t daemon_pid = ::fork();
  if (daemon_pid < 0) {
    write_all(fds[1], fmt::format("cannot fork: {}", std::strerror(errno)));
    ::_exit(1);
  }
  if (daemon_pid > 0) ::_exit(0);

  g_ready_fd = fds[1];
  g_log_file = log_file;
  ::umask(027);
  if (::chdir("/") != 0) {
    failed(fmt::format("cannot change to /: {}", std::strerror(errno)));
    ::_exit(1);
  }
  if (auto ok = take_pid_file(with_pid(pid_file, std::to_string(::getpid()))); !ok) {
    failed(ok.error().message);
    ::_exit(1);
  }
  int null_fd = ::open("/dev/null", O_RDWR);
  if (null_fd >= 0) {
    ::dup2(null_fd, STDIN_FILENO);
    ::close(null_fd);
  }
  ::dup2(*log_fd, STDOUT_FILENO);
  ::dup2(*log_fd, STDERR_FILENO);
  ::close(*log_fd);
  return {};
}

void ready(std::string_view note)
{
  if (g_ready_fd < 0) return;
  write_all(g_ready_fd, note.empty() ? fmt::format("ok {}", ::getpid())
                                     : fmt::format("ok {}\n{}", ::getpid(), note));
  ::close(g_ready_fd);
  g_ready_fd = -1;
}

void failed(std::string_view message)
{
  if (g_ready_fd < 0) return;
  remove_pid_file(); // it never ran: leave nothing behind
  write_all(g_ready_fd, message);
  ::close(g_ready_fd);
  g_ready_fd = -1;
}

void notify_systemd(std::string_view state)
{
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || (path[0] != '/' && path[0] != '@')) return;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  const size_t length = std::strlen(path);
  if (length >= sizeof address.sun_path) return;
  std::memcpy(address.sun_path, path, length);
  if (path[0] == '@') address.sun_path[0] = '\0'; // an abstract socket
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  (void)::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL,
                 reinterpret_cast<const sockaddr*>(&address),
                 static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + length));
  ::close(fd);
}

Expected<void> reopen_log()
{
  if (g_log_file.empty()) return {};
  auto fd = open_log(g_log_file);
  if (!fd) return Unexpected(fd.error());
  std::fflush(stdout);
  std::fflush(stderr);
  ::dup2(*fd, STDOUT_FILENO);
  ::dup2(*fd, STDERR_FILENO);
  ::close(*fd);
  return {};
}

bool is_daemon() { return !g_log_file.empty(); }

void remove_pid_file()
{
  if (g_pid_fd < 0) return;
  ::unlink(g_pid_file.c_str());
  ::close(g_pid_fd);
  g_pid_fd = -1;
}

} // namespace acmo::daemon
