#include "core/sqlite/lock_holder.hpp"

#include <fstream>
#include <iterator>
#include <map>
#include <mutex>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/core.h>

namespace acmo {

namespace {

// SQLite's unix VFS locks byte 120 of the -shm file (UNIX_SHM_BASE + WAL_WRITE_LOCK) for as
// long as a connection holds the write lock.
constexpr off_t k_wal_write_lock_byte = 120;

std::string read_file(const std::string& path)
{
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A descriptor of the file at `path`, opened once and never closed. Closing any descriptor of
// a file drops every POSIX lock the process holds on it, SQLite's own included: the shared lock
// on the -shm file that says a connection uses it. Without that lock the next process to open
// the database takes the -shm for its own and truncates it under this process's memory map,
// whose next access then faults (SIGBUS). A file replaced since (another inode) gets a new
// descriptor, and the old one stays open too.
int kept_open(const std::string& path)
{
  static std::mutex mu;
  static std::map<std::string, int> fds;
  std::lock_guard lock(mu);
  struct stat now {};
  if (::stat(path.c_str(), &now) != 0) return -1;
  if (auto it = fds.find(path); it != fds.end()) {
    struct stat held {};
    if (::fstat(it->second, &held) == 0 && held.st_dev == now.st_dev && held.st_ino == now.st_ino) {
      return it->second;
    }
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) fds[path] = fd;
  return fd;
}

} // namespace

std::optional<LockHolder> wal_write_lock_holder(const std::string& db_path)
{
  const int fd = kept_open(db_path + "-shm");
  if (fd < 0) return std::nullopt;
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = k_wal_write_lock_byte;
  fl.l_len = 1;
  const int rc = ::fcntl(fd, F_GETLK, &fl);
  if (rc != 0 || fl.l_type == F_UNLCK || fl.l_pid <= 0) return std::nullopt;
  LockHolder h;
  h.pid = fl.l_pid;
  std::string cmdline = read_file(fmt::format("/proc/{}/cmdline", h.pid));
  while (!cmdline.empty() && cmdline.back() == '\0') cmdline.pop_back();
  for (char& c : cmdline) {
    if (c == '\0') c = ' ';
  }
  if (const auto slash = cmdline.substr(0, cmdline.find(' ')).rfind('/'); slash != std::string::npos) {
    cmdline.erase(0, slash + 1); // the program's name, not its path
  }
  if (cmdline.size() > 80) cmdline = cmdline.substr(0, 77) + "...";
  h.command = cmdline;
  const std::string stat = read_file(fmt::format("/proc/{}/stat", h.pid));
  if (const auto paren = stat.rfind(')'); paren != std::string::npos && paren + 2 < stat.size()) {
    h.state = stat[paren + 2];
  }
  return h;
}

std::string describe(const LockHolder& holder)
{
  std::string out = fmt::format("pid {}", holder.pid);
  if (!holder.command.empty()) out += fmt::format(" ({})", holder.command);
  switch (holder.state) {
  case 'T':
    out += fmt::format(", which is stopped (Ctrl-Z or SIGSTOP: `kill -CONT {}` resumes it)",
                       holder.pid);
    break;
  case 't': out += ", which is stopped in a debugger"; break;
  case 'Z': out += ", which has exited but not been reaped"; break;
  case 'D': out += ", which waits on the disk"; break;
  default: break;
  }
  if (holder.held_ms >= 1000) out += fmt::format(", for {} s", holder.held_ms / 1000);
  return out;
}

} // namespace acmo
