#include "core/queue/sqlite/group_commit.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fmt/core.h>

namespace acmo::sqlite_queue {

namespace {

void futex_wait(std::atomic<uint32_t>& word, uint32_t expected)
{
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, expected, nullptr,
            nullptr, 0);
}

void futex_wake(std::atomic<uint32_t>& word)
{
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, 1, nullptr,
            nullptr, 0);
}

} // namespace

GroupCommit::GroupCommit(bool durability_full, std::string wal_path, Execute execute)
  : m_durability_full(durability_full), m_wal_path(std::move(wal_path)),
    m_execute(std::move(execute))
{
}

Expected<void> GroupCommit::write(WriteOp& op)
{
  std::unique_lock lock(m_mu);
  m_pending.push_back(&op);
  for (;;) {
    if (op.state.load(std::memory_order_relaxed) == WriteOp::k_done) break;
    if (!m_leader_active && !op.taken) {
      lead(op, lock);
      break;
    }
    // Sleep on the op's own word, not on the mutex: see WriteOp::state.
    op.state.store(WriteOp::k_waiting, std::memory_order_relaxed);
    lock.unlock();
    uint32_t state;
    while ((state = op.state.load(std::memory_order_acquire)) == WriteOp::k_waiting) {
      futex_wait(op.state, WriteOp::k_waiting);
    }
    if (state == WriteOp::k_done) break; // without the lock: the leader is done with it
    lock.lock();                          // told to lead: look again under the lock
  }
  // lead() returns without the lock and so does the wake-up that finds k_done, but the check
  // at the top of the loop holds it: a follower told to lead can find, once it has the lock
  // again, that a new leader took its request and finished it meanwhile.
  if (lock.owns_lock()) lock.unlock();
  if (op.error) return Unexpected(*op.error);
  return {};
}

void GroupCommit::lead(WriteOp& op, std::unique_lock<std::mutex>& lock)
{
  m_leader_active = true;
  gather_while_syncing(lock);
  std::vector<WriteOp*> batch;
  batch.swap(m_pending);
  for (auto* o : batch) o->taken = true;
  lock.unlock();
  m_execute(batch);
  bool needs_sync = false;
  for (auto* o : batch) needs_sync = needs_sync || (o->durable && !o->error);
  needs_sync = needs_sync && m_durability_full;
  uint64_t generation = 0;
  if (needs_sync) {
    std::lock_guard sync_lock(m_sync_mu);
    generation = ++m_committed_generation;
  }
  lock.lock();
  // Hand the lead to the first request that queued up meanwhile, then wait for the disk.
  m_leader_active = false;
  if (!m_pending.empty()) {
    m_pending.front()->state.store(WriteOp::k_lead, std::memory_order_release);
    futex_wake(m_pending.front()->state);
  }
  lock.unlock();
  if (needs_sync) {
    if (auto failure = make_durable(generation)) {
      for (auto* o : batch) {
        if (o->durable && !o->error) o->error = failure;
      }
    }
  }
  // Each op's last touch is the store of k_done, under the lock (a follower that was told
  // to lead may be looking at its word under it); the wakes after it use only the address.
  std::vector<std::atomic<uint32_t>*> words;
  words.reserve(batch.size());
  lock.lock();
  for (auto* o : batch) {
    if (o != &op) words.push_back(&o->state);
    o->state.store(WriteOp::k_done, std::memory_order_release);
  }
  lock.unlock();
  for (auto* word : words) futex_wake(*word);
}

// Called by a new leader (holding `lock` on the mutex) before it takes the pending requests.
// When every pending request is a durable send and an fsync of the WAL is under way, a
// commit made now could not be acknowledged before that fsync ends and the next one runs:
// wait for it to end (the lead stays taken, so the requests that arrive meanwhile queue up)
// and commit them all in one transaction. Many concurrent senders then share a transaction
// instead of committing one or two at a time, each paying SQLite's cost per transaction.
void GroupCommit::gather_while_syncing(std::unique_lock<std::mutex>& lock)
{
  if (!m_durability_full) return;
  for (const auto* o : m_pending) {
    if (!o->durable) return; // receives, deletes: nothing to wait for
  }
  lock.unlock();
  {
    std::unique_lock sync_lock(m_sync_mu);
    m_sync_cv.wait_for(sync_lock, std::chrono::milliseconds(50), [this] { return !m_syncing; });
  }
  lock.lock();
}

// Wait until the WAL is on disk up to commit `generation`, syncing it if no one else is.
std::optional<Error> GroupCommit::make_durable(uint64_t generation)
{
  std::unique_lock lock(m_sync_mu);
  while (m_synced_generation < generation) {
    if (m_syncing) {
      m_sync_cv.wait(lock);
      continue;
    }
    m_syncing = true;
    const uint64_t target = m_committed_generation;
    lock.unlock();
    const int err = sync_wal();
    lock.lock();
    m_syncing = false;
    m_sync_cv.notify_all();
    if (err != 0) {
      return Error(Errc::unavailable,
                   fmt::format("cannot flush the queue's write-ahead log to disk ({}); the "
                               "message may or may not be stored: retry with the same "
                               "deduplication id",
                               std::strerror(err)));
    }
    m_synced_generation = std::max(m_synced_generation, target);
  }
  return std::nullopt;
}

// fdatasync the WAL file. Any descriptor of the file syncs the file's data. A missing WAL
// means SQLite checkpointed it into the (synced) database and removed it.
int GroupCommit::sync_wal() const
{
  const int fd = ::open(m_wal_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? 0 : errno;
  const int rc = ::fdatasync(fd);
  const int err = rc == 0 ? 0 : errno;
  ::close(fd);
  return err;
}

} // namespace acmo::sqlite_queue
