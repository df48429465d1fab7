#include "core/store/change_signal.hpp"

#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/core.h>

namespace acmo {

struct ChangeSignal::Shared {
  alignas(64) std::atomic<int64_t> begun;
  alignas(64) std::atomic<int64_t> ended;
};

static_assert(std::atomic<int64_t>::is_always_lock_free, "the counters are shared by processes");

namespace {

constexpr size_t k_file_size = 4096;

Unexpected signal_error(const std::string& path, const char* what)
{
  return make_error(Errc::unavailable,
                    fmt::format("cannot {} {}: {}; it needs the owner and permissions of the "
                                "database beside it",
                                what, path, std::strerror(errno)));
}

} // namespace

Expected<std::unique_ptr<ChangeSignal>> ChangeSignal::open(const std::string& db_path)
{
  const std::string path = db_path + "-changes";
  struct stat db {};
  const bool have_db = ::stat(db_path.c_str(), &db) == 0;
  const mode_t mode = have_db ? (db.st_mode & 0666) : 0644;
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, mode);
  if (fd < 0) return signal_error(path, "open");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return signal_error(path, "read");
  }
  // Made by root for a database of another user (as SQLite does with its -wal and -shm).
  if (have_db && ::geteuid() == 0 && (st.st_uid != db.st_uid || st.st_gid != db.st_gid)) {
    if (::fchown(fd, db.st_uid, db.st_gid) != 0) {
      ::close(fd);
      return signal_error(path, "give the database's owner to");
    }
  }
  // A new file is zeros: both counters 0. Its blocks are allocated, not left sparse: a write
  // through the mapping to a page with no block behind it on a full disk is a SIGBUS. Neither
  // call changes what is there, so processes opening it at once do not reset the counters.
  if (static_cast<size_t>(st.st_size) < k_file_size) {
    const int err = ::posix_fallocate(fd, 0, k_file_size);
    if (err == EOPNOTSUPP || err == EINVAL) {
      if (::ftruncate(fd, k_file_size) != 0) {
        ::close(fd);
        return signal_error(path, "size");
      }
    } else if (err != 0) {
      errno = err;
      ::close(fd);
      return signal_error(path, "allocate");
    }
  }
  void* map = ::mmap(nullptr, k_file_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return signal_error(path, "map");
  return std::unique_ptr<ChangeSignal>(new ChangeSignal(static_cast<Shared*>(map), k_file_size));
}

ChangeSignal::~ChangeSignal() { ::munmap(m_shared, m_size); }

int64_t ChangeSignal::begin() { return m_shared->begun.fetch_add(1) + 1; }

void ChangeSignal::end(int64_t ticket)
{
  int64_t seen = m_shared->ended.load();
  while (seen < ticket && !m_shared->ended.compare_exchange_weak(seen, ticket)) {
  }
}

int64_t ChangeSignal::begun() const { return m_shared->begun.load(); }

int64_t ChangeSignal::ended() const { return m_shared->ended.load(); }

} // namespace acmo
