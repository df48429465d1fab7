#include "core/queue/sqlite/checkpointer.hpp"

#include <memory>
#include <utility>

#include <sqlite3.h>

#include "core/sqlite/sqlite.hpp"

namespace acmo::sqlite_queue {

WalCheckpointer::WalCheckpointer(std::string db_path, int64_t busy_timeout_ms)
  : m_db_path(std::move(db_path)), m_busy_timeout_ms(busy_timeout_ms)
{
}

WalCheckpointer::~WalCheckpointer() { stop(); }

void WalCheckpointer::attach(sqlite3* writer) { sqlite3_wal_hook(writer, &on_wal_commit, this); }

void WalCheckpointer::set_consuming(bool consuming)
{
  m_threshold = consuming ? k_pages_consuming : k_pages;
}

int WalCheckpointer::on_wal_commit(void* arg, sqlite3* db, const char* name, int pages)
{
  auto* self = static_cast<WalCheckpointer*>(arg);
  if (pages >= self->m_threshold) {
    // What SQLite's own hook does: a passive checkpoint, which gives up on a busy database.
    // Busy because the thread is checkpointing: wait for it (it has at most 1,000 pages to
    // copy), and the rest is quick.
    int rc = sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
    if (rc == SQLITE_BUSY && self->wait_for_thread()) {
      sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
    }
  } else if (pages / k_pages > self->m_asked_at) {
    self->checkpoint_in_background();
  }
  // Ask again each time the WAL has grown by another 1,000 pages, and from the start once it
  // has started over.
  self->m_asked_at = pages / k_pages;
  return SQLITE_OK;
}

void WalCheckpointer::checkpoint_in_background() noexcept
{
  try {
    {
      std::lock_guard lock(m_mu);
      if (m_stop) return;
      m_wanted = true;
      if (!m_thread.joinable()) m_thread = std::thread([this] { run(); });
    }
    m_cv.notify_all();
  } catch (const std::exception&) {
    // No thread: the writer still checkpoints at 8,000 pages.
  }
}

bool WalCheckpointer::wait_for_thread() noexcept
{
  std::unique_lock lock(m_mu);
  if (!m_running) return false;
  m_cv.wait(lock, [this] { return !m_running; });
  return true;
}

void WalCheckpointer::run() noexcept
{
  std::unique_ptr<sqlite::Database> db;
  std::unique_lock lock(m_mu);
  for (;;) {
    m_cv.wait(lock, [this] { return m_wanted || m_stop; });
    if (m_stop) break;
    m_wanted = false;
    m_running = true;
    lock.unlock();
    try {
      if (!db) {
        db = std::make_unique<sqlite::Database>(m_db_path, m_busy_timeout_ms);
        db->exec("PRAGMA synchronous=NORMAL"); // sync the WAL before, the database after
        db->query_int("PRAGMA user_version");  // read the file once: it is in WAL mode
      }
      sqlite3_wal_checkpoint_v2(db->handle(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr,
                                nullptr);
    } catch (const std::exception&) {
      // Nothing lost: the writer still checkpoints at 8,000 pages, and reports its errors.
      db.reset();
    }
    lock.lock();
    m_running = false;
    m_cv.notify_all();
  }
}

void WalCheckpointer::stop()
{
  {
    std::lock_guard lock(m_mu);
    m_stop = true;
  }
  m_cv.notify_all();
  if (m_thread.joinable()) m_thread.join();
}

} // namespace acmo::sqlite_queue
