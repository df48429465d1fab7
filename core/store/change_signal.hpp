// The embedded store's change signal: two counters in a small shared file beside the database
// (DATA_DIR/acmo.db-changes), mapped by every process, that let a reader's cache skip asking
// the store when no order can have changed (docs/orders.md §11).
//
// A writer takes a ticket inside the write transaction that changes orders (begin), and marks
// it ended once that transaction has committed or rolled back (end). SQLite's single writer
// hands tickets out in commit order, so when `ended` equals `begun` every transaction with a
// ticket up to it has finished: a read of the store made after seeing that sees all their
// changes. `ended` keeps the highest ended ticket, so a writer killed between its commit and
// its end is covered by the next writer's end.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "core/util/error.hpp"

namespace acmo {

class ChangeSignal
{
public:
  // Map the signal of the database at `db_path`, creating it with the database's owner and
  // permissions if need be.
  static Expected<std::unique_ptr<ChangeSignal>> open(const std::string& db_path);
  ~ChangeSignal();
  ChangeSignal(const ChangeSignal&) = delete;
  ChangeSignal& operator=(const ChangeSignal&) = delete;

  // Inside the write transaction that changes orders: its ticket.
  int64_t begin();
  // Once that transaction has committed or rolled back.
  void end(int64_t ticket);

  int64_t begun() const;
  int64_t ended() const;

private:
  struct Shared;
  ChangeSignal(Shared* shared, size_t size) : m_shared(shared), m_size(size) {}
  Shared* m_shared;
  size_t m_size;
};

} // namespace acmo
