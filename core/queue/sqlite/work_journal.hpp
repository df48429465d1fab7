// Which messages a process is handling right now, kept where other processes can read it once
// that process has died (SqliteQueue::consume and its housekeeping).
//
// Queue::consume takes messages, runs the consumer's work on them and deletes them in one
// transaction, without ever putting them in flight: cheap, but a message whose handling kills
// the process (a crash, an abort, the OOM killer) would leave no trace, since the transaction
// rolls back, and would be taken and kill the next process for ever. So before the work runs,
// the sequence numbers of the batch are written into a slot of this journal, a file beside the
// database mapped into memory (a few stores, no system call), and cleared once the work has
// returned. Each slot is held by an open file description lock (F_OFD_SETLK) for as long as
// its owner lives; the kernel drops the lock when the process dies, however it dies, so a slot
// that can be locked and still names messages is the work of a dead process. Housekeeping
// claims such slots and counts a failed attempt against each message they name.
//
// The slot lives in the page cache, not on disk: what a power cut loses here is only the count
// of an attempt that the power cut itself ended.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/util/error.hpp"

namespace acmo {

class WorkJournal
{
public:
  // The most messages one slot names: the largest batch a receive takes.
  static constexpr size_t k_max_batch = 1000;

  // The journal in file `path`, created when it is first written to.
  explicit WorkJournal(std::string path);
  ~WorkJournal();
  WorkJournal(const WorkJournal&) = delete;
  WorkJournal& operator=(const WorkJournal&) = delete;

  // Record that this process now handles the messages `seqs` of queue `queue_id` (at most
  // k_max_batch), until end(). The first call takes a slot of the file for this object.
  Expected<void> begin(int64_t queue_id, const int64_t* seqs, size_t count);
  // The work on the messages of the last begin() has returned.
  void end();

  // The work a dead process left: its pid, and the messages of queue `queue_id` it was
  // handling.
  struct Orphan {
    int slot = 0;
    int64_t pid = 0;
    std::vector<int64_t> seqs;
  };
  // Claim the slots dead processes left with work of queue `queue_id` in them. Each stays
  // locked by this object until settle() (the attempts were counted: clear the slot) or
  // unclaim() (they could not be: leave it for the next look).
  std::vector<Orphan> claim_orphans(int64_t queue_id);
  void settle(const std::vector<Orphan>& orphans);
  void unclaim(const std::vector<Orphan>& orphans);

private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

} // namespace acmo
