// The embedded queue's group commit: concurrent writers of one process share transactions.
// The first thread to find the writer idle becomes the leader: it takes every request queued
// so far, runs them as one batch (one transaction) and hands the lead to the next one waiting.
//
// Durability (queue.durability = "full") without holding the write lock through an fsync:
// transactions commit with synchronous=NORMAL, and the requests that need it wait for an
// fdatasync of the WAL file that covers their commit. While one batch waits for the disk, the
// next one runs, and one fsync covers every commit made before it started.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/util/error.hpp"
#include "core/util/log.hpp"

namespace acmo::sqlite_queue {

// The state of one write transaction, shared by every request committed in it (sqlite_queue.cpp).
struct Txn;

// One write request waiting for (or taking part in) a group commit.
struct WriteOp {
  std::function<void(Txn&)> fn;
  bool durable = false; // must be fsynced before it is answered
  bool bulk = false;    // a bulk load: one big transaction, its checkpoint in the background
  std::optional<Error> error;
  bool taken = false; // in a batch that a leader is committing
  // The handler whose thread asked (log::current_handler(), the thread's own, which lasts as
  // long as the op: that thread waits for its answer): the leader of a group commit logs what
  // the op did in its name.
  std::string_view handler = log::current_handler();
  // What the op's thread waits for, sleeping on this word (a futex) rather than on the write
  // mutex: k_lead, its turn to lead the next commit; k_done, answered. Waking each finished
  // sender costs one switch to it, where a condition variable signalled under the mutex made
  // it wake only to sleep again on that mutex (two more on two busy cores). Set under the write
  // mutex; once k_done is stored the op's thread may return and the op be gone, so a wake
  // after it uses only the word's address (FUTEX_WAKE reads no memory).
  static constexpr uint32_t k_waiting = 0;
  static constexpr uint32_t k_lead = 1;
  static constexpr uint32_t k_done = 2;
  std::atomic<uint32_t> state{k_waiting};
};

class GroupCommit
{
public:
  // Runs a batch in one transaction on the leader's thread, setting each op's error.
  using Execute = std::function<void(const std::vector<WriteOp*>&)>;

  // `wal_path`: the WAL file a durable request waits to see synced (with `durability_full`).
  GroupCommit(bool durability_full, std::string wal_path, Execute execute);

  // Commit `op` together with whatever else is pending, and wait for its answer (and with
  // `op.durable`, for the disk): its error, or success.
  Expected<void> write(WriteOp& op);

private:
  // Commit every pending request (op's among them) in one transaction, as the leader, then
  // wait for the disk if they need it and answer them. Called with `lock` held; returns with
  // it released.
  void lead(WriteOp& op, std::unique_lock<std::mutex>& lock);
  void gather_while_syncing(std::unique_lock<std::mutex>& lock);
  std::optional<Error> make_durable(uint64_t generation);
  int sync_wal() const;

  const bool m_durability_full;
  const std::string m_wal_path;
  const Execute m_execute;

  std::mutex m_mu;
  std::vector<WriteOp*> m_pending;
  bool m_leader_active = false;

  std::mutex m_sync_mu;
  std::condition_variable m_sync_cv;
  uint64_t m_committed_generation = 0;
  uint64_t m_synced_generation = 0;
  bool m_syncing = false;
};

} // namespace acmo::sqlite_queue
