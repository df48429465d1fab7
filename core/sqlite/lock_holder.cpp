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
// long as a connection holds the write lock. The bytes after it are the checkpoint and
// recovery locks, the five read marks and the "dead man switch" (121 to 128): a connection
// locks one of them exclusively only for a moment (a checkpoint or a restart of the WAL
// updating the read marks, a recovery of the WAL index, the first open setting up the -shm).
constexpr off_t k_wal_write_lock_byte = 120;
constexpr off_t k_wal_index_first_byte = 121;
constexpr off_t k_wal_index_bytes = 8;

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

// The other process whose lock on bytes [start, start + len) of the database's -shm file keeps
// this one from taking a lock of `type` there.
static std::optional<LockHolder> shm_lock_holder(const std::string& db_path, off_t start,
                                                 off_t len, short type)
{
  const int fd = kept_open(db_path + "-shm");
  if (fd < 0) return std::nullopt;
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = start;
  fl.l_len = len;
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

std::optional<LockHolder> wal_write_lock_holder(const std::string& db_path)
{
  return shm_lock_holder(db_path, k_wal_write_lock_byte, 1, F_WRLCK);
}

std::optional<LockHolder> wal_index_lock_holder(const std::string& db_path)
{
  // A shared lock conflicts with an exclusive one only: the readers' shared locks on the read
  // marks are not reported.
  return shm_lock_holder(db_path, k_wal_index_first_byte, k_wal_index_bytes, F_RDLCK);
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
