#include "core/sqlite/wal_vfs.hpp"

#include <sqlite3.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace acmo::sqlite {
namespace {

// How SQLite writes a WAL (wal.c, walWriteOneFrame and sqlite3WalFrames): the 32-byte file
// header when the log starts over, followed by a sync; then per page a 24-byte frame header and
// the page, at increasing offsets; the frame header's bytes 4..7 hold the database size after
// the commit on the transaction's last frame and 0 on every other. The commit is published to
// other connections (the wal-index header) only after the last frame's page is written.
//
// So: consecutive writes are gathered in a buffer and written as one, and the buffer is written
// (1) when the page after a commit frame's header arrives, before that write returns, (2) when
// a write does not continue it or would overflow it, and (3) before any other operation on the
// file (read, sync, truncate, size, lock, close, ...), so that every operation sees the file as
// if each write had been made at once. A failed write of the buffer fails the write or
// operation that caused it, as SQLite's own write would have.
constexpr int k_frame_header = 24;
// The unix VFS writes at most 128 KiB - 1 per call (os_unix.c, seekAndWrite masks the count
// with 0x1ffff), and reports a longer write as a full disk.
constexpr int k_capacity = 120 * 1024;

struct WalFile {
  sqlite3_file base; // pMethods = &k_methods
  sqlite3_file* real; // the default VFS's file, right after this struct
  char* buffer;       // k_capacity bytes, allocated on the first write
  sqlite3_int64 offset; // where buffer[0] goes
  int size;             // bytes in the buffer
  bool commit_next;     // the last write was a commit frame's header
};

sqlite3_vfs* g_default = nullptr; // the VFS we wrap
sqlite3_vfs g_vfs;
constexpr size_t k_real_offset = (sizeof(WalFile) + 15) & ~size_t{15};

sqlite3_file* real(sqlite3_file* file) { return reinterpret_cast<WalFile*>(file)->real; }

int flush(WalFile* w)
{
  if (w->size == 0) return SQLITE_OK;
  const int size = w->size;
  w->size = 0; // whatever happens, these bytes are not written twice
  return w->real->pMethods->xWrite(w->real, w->buffer, size, w->offset);
}

int flush(sqlite3_file* file) { return flush(reinterpret_cast<WalFile*>(file)); }

uint32_t big_endian32(const void* p)
{
  const auto* b = static_cast<const unsigned char*>(p);
  return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
}

int wal_write(sqlite3_file* file, const void* data, int amount, sqlite3_int64 offset)
{
  auto* w = reinterpret_cast<WalFile*>(file);
  const bool ends_commit = w->commit_next;
  w->commit_next = amount == k_frame_header && big_endian32(static_cast<const char*>(data) + 4) != 0;
  if (w->size > 0 && (offset != w->offset + w->size || amount > k_capacity - w->size)) {
    if (int rc = flush(w); rc != SQLITE_OK) return rc;
  }
  if (w->buffer == nullptr) w->buffer = static_cast<char*>(sqlite3_malloc(k_capacity));
  if (w->buffer == nullptr || amount > k_capacity) {
    return w->real->pMethods->xWrite(w->real, data, amount, offset);
  }
  if (w->size == 0) w->offset = offset;
  std::memcpy(w->buffer + w->size, data, static_cast<size_t>(amount));
  w->size += amount;
  return ends_commit ? flush(w) : SQLITE_OK;
}

int wal_close(sqlite3_file* file)
{
  auto* w = reinterpret_cast<WalFile*>(file);
  const int flushed = flush(w);
  sqlite3_free(w->buffer);
  w->buffer = nullptr;
  const int rc = w->real->pMethods ? w->real->pMethods->xClose(w->real) : SQLITE_OK;
  return flushed != SQLITE_OK ? flushed : rc;
}

int wal_read(sqlite3_file* file, void* out, int amount, sqlite3_int64 offset)
{
  if (int rc = flush(file); rc != SQLITE_OK) return rc;
  return real(file)->pMethods->xRead(real(file), out, amount, offset);
}

int wal_truncate(sqlite3_file* file, sqlite3_int64 size)
{
  if (int rc = flush(file); rc != SQLITE_OK) return rc;
  return real(file)->pMethods->xTruncate(real(file), size);
}

int wal_sync(sqlite3_file* file, int flags)
{
  if (int rc = flush(file); rc != SQLITE_OK) return rc;
  return real(file)->pMethods->xSync(real(file), flags);
}

int wal_file_size(sqlite3_file* file, sqlite3_int64* size)
{
  if (int rc = flush(file); rc != SQLITE_OK) return rc;
  return real(file)->pMethods->xFileSize(real(file), size);
}

int wal_lock(sqlite3_file* file, int level)
{
  if (int rc = flush(file); rc != SQLITE_OK) return rc;
  return real(file)->pMethods->xLock(real(file), level);
}

int wal_unlock(sqlite3_file* file, int level)
{
  if (int rc = flush(file); rc != SQLITE_OK) return rc;
  return real(file)->pMethods->xUnlock(real(file), level);
}

int wal_check_reserved(sqlite3_file* file, int* out)
{
  if (int rc = flush(file); rc != SQLITE_OK) return rc;
  return real(file)->pMethods->xCheckReservedLock(real(file), out);
}

int wal_file_control(sqlite3_file* file, int op, void* arg)
{
  if (int rc = flush(file); rc != SQLITE_OK) return rc;
  return real(file)->pMethods->xFileControl(real(file), op, arg);
}

int wal_sector_size(sqlite3_file* file)
{
  return real(file)->pMethods->xSectorSize(real(file));
}

int wal_device_characteristics(sqlite3_file* file)
{
  return real(file)->pMethods->xDeviceCharacteristics(real(file));
}

// SQLite maps the wal-index through the database file, not the WAL, and never maps a WAL into
// memory; these pass through for completeness, after the buffer is written.
int wal_shm_map(sqlite3_file* file, int page, int page_size, int extend, void volatile** out)
{
  if (int rc = flush(file); rc != SQLITE_OK) return rc;
  const auto* m = real(file)->pMethods;
  return m->iVersion >= 2 ? m->xShmMap(real(file), page, page_size, extend, out) : SQLITE_IOERR;
}

int wal_shm_lock(sqlite3_file* file, int offset, int n, int flags)
{
  if (int rc = flush(file); rc != SQLITE_OK) return rc;
  const auto* m = real(file)->pMethods;
  return m->iVersion >= 2 ? m->xShmLock(real(file), offset, n, flags) : SQLITE_IOERR;
}

void wal_shm_barrier(sqlite3_file* file)
{
  flush(file);
  const auto* m = real(file)->pMethods;
  if (m->iVersion >= 2) m->xShmBarrier(real(file));
}

int wal_shm_unmap(sqlite3_file* file, int delete_flag)
{
  if (int rc = flush(file); rc != SQLITE_OK) return rc;
  const auto* m = real(file)->pMethods;
  return m->iVersion >= 2 ? m->xShmUnmap(real(file), delete_flag) : SQLITE_OK;
}

int wal_fetch(sqlite3_file* file, sqlite3_int64 offset, int amount, void** out)
{
  *out = nullptr;
  if (int rc = flush(file); rc != SQLITE_OK) return rc;
  const auto* m = real(file)->pMethods;
  return m->iVersion >= 3 ? m->xFetch(real(file), offset, amount, out) : SQLITE_OK;
}

int wal_unfetch(sqlite3_file* file, sqlite3_int64 offset, void* page)
{
  const auto* m = real(file)->pMethods;
  return m->iVersion >= 3 ? m->xUnfetch(real(file), offset, page) : SQLITE_OK;
}

const sqlite3_io_methods k_methods = {
  3,
  wal_close,
  wal_read,
  wal_write,
  wal_truncate,
  wal_sync,
  wal_file_size,
  wal_lock,
  wal_unlock,
  wal_check_reserved,
  wal_file_control,
  wal_sector_size,
  wal_device_characteristics,
  wal_shm_map,
  wal_shm_lock,
  wal_shm_barrier,
  wal_shm_unmap,
  wal_fetch,
  wal_unfetch,
};

// Files other than WALs are the default VFS's own, opened in place: SQLite allocates
// g_vfs.szOsFile bytes for every file, which is more than the default VFS needs.
int gather_open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* file, int flags, int* out_flags)
{
  if ((flags & SQLITE_OPEN_WAL) == 0) return g_default->xOpen(g_default, name, file, flags, out_flags);
  auto* w = reinterpret_cast<WalFile*>(file);
  std::memset(w, 0, sizeof *w);
  w->real = reinterpret_cast<sqlite3_file*>(reinterpret_cast<char*>(file) + k_real_offset);
  std::memset(w->real, 0, static_cast<size_t>(g_default->szOsFile));
  const int rc = g_default->xOpen(g_default, name, w->real, flags, out_flags);
  // SQLite calls xClose when pMethods is set, even after a failed open.
  w->base.pMethods = w->real->pMethods != nullptr ? &k_methods : nullptr;
  return rc;
}

} // namespace

const char* gathering_vfs_name()
{
  static std::once_flag once;
  static const char* name = nullptr;
  std::call_once(once, [] {
    g_default = sqlite3_vfs_find(nullptr);
    if (g_default == nullptr) return;
    // Every other method is the default VFS's own, with its application data (the unix VFS
    // keeps its locking style there) and limits.
    g_vfs = *g_default;
    g_vfs.pNext = nullptr;
    g_vfs.zName = "acmo-gather";
    g_vfs.szOsFile = static_cast<int>(k_real_offset) + g_default->szOsFile;
    g_vfs.xOpen = gather_open;
    if (sqlite3_vfs_register(&g_vfs, 0) == SQLITE_OK) name = g_vfs.zName;
  });
  return name;
}

} // namespace acmo::sqlite
