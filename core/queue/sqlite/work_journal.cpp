#include "core/queue/sqlite/work_journal.hpp"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/core.h>

namespace acmo {

namespace {

constexpr uint32_t k_magic = 0x61636d77; // "acmw"
constexpr size_t k_slot_bytes = 8192;
constexpr int k_max_slots = 1024;

// The start of a slot; the sequence numbers follow it.
struct SlotHeader {
  uint32_t magic;
  uint32_t count; // messages named; 0: no work in hand
  int64_t pid;
  int64_t queue_id;
  int64_t reserved;
};
static_assert(sizeof(SlotHeader) + WorkJournal::k_max_batch * sizeof(int64_t) <= k_slot_bytes);

off_t slot_offset(int slot) { return static_cast<off_t>(slot) * static_cast<off_t>(k_slot_bytes); }

} // namespace

struct WorkJournal::Impl {
  std::string path;
  std::mutex mu;
  int fd = -1;
  int own_slot = -1;
  void* mapped = nullptr; // own_slot's bytes

  // Lock or unlock the first byte of a slot: the lock belongs to this open file description,
  // so it conflicts with every other one (other processes, other journals of this one).
  bool lock(int slot, short type)
  {
    struct flock fl {};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = slot_offset(slot);
    fl.l_len = 1;
    return ::fcntl(fd, F_OFD_SETLK, &fl) == 0;
  }

  bool open_file(bool create)
  {
    if (fd >= 0) return true;
    fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0644);
    return fd >= 0;
  }

  SlotHeader read_header(int slot) const
  {
    SlotHeader h{};
    if (::pread(fd, &h, sizeof h, slot_offset(slot)) != static_cast<ssize_t>(sizeof h)) h = {};
    return h;
  }

  // Take a slot for this object: one nobody holds and that names no work of a dead process
  // (housekeeping counts that work first).
  Expected<void> take_slot()
  {
    if (!open_file(true)) {
      return make_error(Errc::unavailable,
                        fmt::format("cannot open {}: {}", path, std::strerror(errno)));
    }
    for (int slot = 0; slot < k_max_slots; ++slot) {
      if (!lock(slot, F_WRLCK)) continue;
      const SlotHeader h = read_header(slot);
      if (h.magic == k_magic && h.count != 0) {
        lock(slot, F_UNLCK);
        continue;
      }
      // fallocate only ever grows the file, so two processes taking slots at once cannot
      // shrink it under each other's mappings.
      if (const int e = ::posix_fallocate(fd, slot_offset(slot), k_slot_bytes); e != 0) {
        lock(slot, F_UNLCK);
        return make_error(Errc::unavailable,
                          fmt::format("cannot grow {}: {}", path, std::strerror(e)));
      }
      void* p = ::mmap(nullptr, k_slot_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                       slot_offset(slot));
      if (p == MAP_FAILED) {
        lock(slot, F_UNLCK);
        return make_error(Errc::unavailable,
                          fmt::format("cannot map {}: {}", path, std::strerror(errno)));
      }
      auto* header = static_cast<SlotHeader*>(p);
      header->count = 0;
      header->pid = ::getpid();
      header->magic = k_magic;
      own_slot = slot;
      mapped = p;
      return {};
    }
    return make_error(Errc::unavailable,
                      fmt::format("all {} slots of {} are in use", k_max_slots, path));
  }
};

WorkJournal::WorkJournal(std::string path) : m_impl(std::make_unique<Impl>())
{
  m_impl->path = std::move(path);
}

WorkJournal::~WorkJournal()
{
  if (m_impl->mapped != nullptr) {
    std::atomic_ref<uint32_t>(static_cast<SlotHeader*>(m_impl->mapped)->count).store(0);
    ::munmap(m_impl->mapped, k_slot_bytes);
  }
  if (m_impl->fd >= 0) ::close(m_impl->fd); // drops the locks
}

Expected<void> WorkJournal::begin(int64_t queue_id, const int64_t* seqs, size_t count)
{
  std::lock_guard lock(m_impl->mu);
  if (m_impl->mapped == nullptr) {
    if (auto ok = m_impl->take_slot(); !ok) return ok;
  }
  if (count > k_max_batch) count = k_max_batch;
  auto* header = static_cast<SlotHeader*>(m_impl->mapped);
  std::memcpy(header + 1, seqs, count * sizeof(int64_t));
  header->queue_id = queue_id;
  // The count last: a reader never sees a count whose sequence numbers are not written yet.
  std::atomic_ref<uint32_t>(header->count).store(static_cast<uint32_t>(count),
                                                 std::memory_order_release);
  return {};
}

void WorkJournal::end()
{
  std::lock_guard lock(m_impl->mu);
  if (m_impl->mapped == nullptr) return;
  std::atomic_ref<uint32_t>(static_cast<SlotHeader*>(m_impl->mapped)->count)
    .store(0, std::memory_order_release);
}

std::vector<WorkJournal::Orphan> WorkJournal::claim_orphans(int64_t queue_id)
{
  std::lock_guard lock(m_impl->mu);
  std::vector<Orphan> out;
  if (!m_impl->open_file(false)) return out; // no consumer ever wrote one
  struct stat st {};
  if (::fstat(m_impl->fd, &st) != 0) return out;
  const int slots = static_cast<int>(std::min<off_t>(st.st_size / static_cast<off_t>(k_slot_bytes),
                                                     k_max_slots));
  for (int slot = 0; slot < slots; ++slot) {
    if (slot == m_impl->own_slot || !m_impl->lock(slot, F_WRLCK)) continue;
    const SlotHeader h = m_impl->read_header(slot);
    if (h.magic != k_magic || h.count == 0 || h.count > k_max_batch || h.queue_id != queue_id) {
      m_impl->lock(slot, F_UNLCK);
      continue;
    }
    Orphan orphan{slot, h.pid, std::vector<int64_t>(h.count)};
    const auto bytes = static_cast<ssize_t>(h.count * sizeof(int64_t));
    if (::pread(m_impl->fd, orphan.seqs.data(), static_cast<size_t>(bytes),
                slot_offset(slot) + static_cast<off_t>(sizeof(SlotHeader)))
        != bytes) {
      m_impl->lock(slot, F_UNLCK);
      continue;
    }
    out.push_back(std::move(orphan));
  }
  return out;
}

void WorkJournal::settle(const std::vector<Orphan>& orphans)
{
  std::lock_guard lock(m_impl->mu);
  for (const Orphan& o : orphans) {
    const uint32_t zero = 0;
    [[maybe_unused]] const ssize_t n =
      ::pwrite(m_impl->fd, &zero, sizeof zero,
               slot_offset(o.slot) + static_cast<off_t>(offsetof(SlotHeader, count)));
    m_impl->lock(o.slot, F_UNLCK);
  }
}

void WorkJournal::unclaim(const std::vector<Orphan>& orphans)
{
  std::lock_guard lock(m_impl->mu);
  for (const Orphan& o : orphans) m_impl->lock(o.slot, F_UNLCK);
}

} // namespace acmo
