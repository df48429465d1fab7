// Helpers for tests that run real processes: fork a child that runs a function and _exit()s
// with its result, and wait for it with a time limit. Catch2 assertions run only in the parent.
#pragma once

#include <cerrno>
#include <chrono>
#include <functional>
#include <thread>
#include <vector>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

namespace acmo::test::process {

// Exit codes of the children, so that a failure in one says where it happened.
constexpr int k_child_ok = 0;
constexpr int k_child_open_failed = 10;
constexpr int k_child_send_failed = 11;
constexpr int k_child_receive_failed = 12;
constexpr int k_child_remove_failed = 13;
constexpr int k_child_write_failed = 14;
constexpr int k_child_threw = 15;
constexpr int k_child_handler_failed = 16;

// Whether this build runs under AddressSanitizer or ThreadSanitizer, whose processes run
// several times slower: tests bounded in time by their work give them a shorter bound.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool k_sanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool k_sanitized = true;
#else
constexpr bool k_sanitized = false;
#endif
#else
constexpr bool k_sanitized = false;
#endif

// A pipe whose ends close with it, or before, one at a time: a reader sees end of file once
// every copy of the write end is closed (spawn's close_in_child, for the copies of children).
class Pipe
{
public:
  Pipe()
  {
    int fds[2];
    if (::pipe(fds) != 0) FAIL("pipe() failed");
    m_read = fds[0];
    m_write = fds[1];
  }
  ~Pipe()
  {
    close_read();
    close_write();
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  int read_fd() const { return m_read; }
  int write_fd() const { return m_write; }
  void close_read() { close_fd(m_read); }
  void close_write() { close_fd(m_write); }

private:
  static void close_fd(int& fd)
  {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  int m_read = -1;
  int m_write = -1;
};

// Run `body` in a child process and _exit() with what it returns. `close_in_child` lists the
// descriptors the child must not keep (pipe ends that belong to the parent or other children:
// a reader only sees end of file once every copy of the write end is closed).
inline pid_t spawn(const std::vector<int>& close_in_child, const std::function<int()>& body)
{
  pid_t pid = ::fork();
  if (pid < 0) FAIL("fork() failed");
  if (pid == 0) {
    for (int fd : close_in_child) ::close(fd);
    int code = k_child_threw;
    try {
      code = body();
    } catch (...) {
    }
    ::_exit(code);
  }
  return pid;
}

// Wait for a child; after `timeout` kill it. Returns its exit code, or 128 + the signal that
// ended it.
inline int wait_child(pid_t pid, std::chrono::milliseconds timeout = std::chrono::seconds(30))
{
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) return -1;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -2;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

} // namespace acmo::test::process
