// A SQLite VFS that is the system's default one except for write-ahead log files, whose writes
// it gathers: SQLite writes each WAL frame as two writes (a 24-byte header, then the page), so
// a transaction that changes 20 pages costs 40 write system calls; this VFS hands the kernel
// each transaction's frames in one write, made before SQLite goes on from writing the commit
// frame, that is before the commit is published to other connections or synced. What reaches
// the file, and in what order relative to every sync, read and lock, is the same as without it.
#pragma once

namespace acmo::sqlite {

// The name to pass to sqlite3_open_v2; registers the VFS (not as the default) on first use.
// Null if SQLite has no default VFS to wrap (then SQLite's own default is used).
const char* gathering_vfs_name();

} // namespace acmo::sqlite
