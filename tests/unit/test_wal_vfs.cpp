// The VFS that gathers a transaction's WAL writes (core/sqlite/wal_vfs.cpp): fewer writes, and the
// file as every other connection and operation sees it unchanged.
#include <sqlite3.h>

#include <fstream>
#include <random>
#include <string>

#include <catch2/catch.hpp>

#include "core/sqlite/sqlite.hpp"
#include "core/sqlite/wal_vfs.hpp"
#include "unit/temp_dir.hpp"

using acmo::sqlite::Database;
using acmo::test::TempDir;

namespace {

// Write system calls this process has made so far (/proc/self/io, "syscw").
long write_calls()
{
  std::ifstream io("/proc/self/io");
  std::string key;
  long value = 0;
  while (io >> key >> value) {
    if (key == "syscw:") return value;
  }
  FAIL("no syscw in /proc/self/io");
  return 0;
}

void prepare_wal(sqlite3* db)
{
  REQUIRE(sqlite3_exec(db,
                       "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                       "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k TEXT, v BLOB);"
                       "CREATE INDEX IF NOT EXISTS t_k ON t (k);",
                       nullptr, nullptr, nullptr)
          == SQLITE_OK);
}

// One transaction of `rows` rows of `size` bytes each (about rows * size / 4096 pages); the
// write calls it took. Nothing is checked until the count is taken: Catch's own output (with
// -s) is writes too.
long insert_rows(sqlite3* db, int rows, int size, int tag)
{
  sqlite3_stmt* stmt = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, "INSERT INTO t (k, v) VALUES (?1, zeroblob(?2))", -1, &stmt,
                             nullptr)
          == SQLITE_OK);
  const long before = write_calls();
  bool ok = sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr) == SQLITE_OK;
  for (int i = 0; ok && i < rows; ++i) {
    const std::string key = "k" + std::to_string(tag) + "-" + std::to_string(i);
    sqlite3_bind_text(stmt, 1, key.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(stmt, 2, size);
    ok = sqlite3_step(stmt) == SQLITE_DONE;
    sqlite3_reset(stmt);
  }
  ok = ok && sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK;
  const long calls = write_calls() - before;
  sqlite3_finalize(stmt);
  INFO(sqlite3_errmsg(db));
  REQUIRE(ok);
  return calls;
}

// The VFS the connection was opened with.
std::string vfs_of(sqlite3* db)
{
  sqlite3_vfs* vfs = nullptr;
  REQUIRE(sqlite3_file_control(db, "main", SQLITE_FCNTL_VFS_POINTER, &vfs) == SQLITE_OK);
  REQUIRE(vfs != nullptr);
  return vfs->zName;
}

} // namespace

TEST_CASE("WAL gathering: acmo's connections use it, and a transaction's frames go out in a "
          "few writes",
          "[sqlite][wal_vfs]")
{
  TempDir dir;
  REQUIRE(acmo::sqlite::gathering_vfs_name() != nullptr);
  Database db(dir.file("gather.db"), 1000);
  CHECK(vfs_of(db.handle()) == "acmo-gather");
  prepare_wal(db.handle());
  insert_rows(db.handle(), 1, 10, 0); // the WAL's header and first sync are behind us

  // About 20 pages: the default VFS makes two writes per page (frame header, then page).
  const long gathered = insert_rows(db.handle(), 40, 2000, 1);

  sqlite3* plain = nullptr;
  REQUIRE(sqlite3_open_v2(dir.file("plain.db").c_str(), &plain,
                          SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr)
          == SQLITE_OK);
  prepare_wal(plain);
  insert_rows(plain, 1, 10, 0);
  const long separate = insert_rows(plain, 40, 2000, 1);
  sqlite3_close(plain);

  INFO("write calls: gathered " << gathered << ", default VFS " << separate);
  CHECK(separate >= 40);
  CHECK(gathered <= 3);
  CHECK(db.query_int("SELECT count(*) FROM t") == 41);
}

TEST_CASE("WAL gathering: another connection sees each commit at once, through big "
          "transactions, spills, rollbacks, checkpoints and restarts of the log",
          "[sqlite][wal_vfs]")
{
  TempDir dir;
  const std::string path = dir.file("shared.db");
  int64_t rows = 0;
  int64_t bytes = 0;
  {
    Database writer(path, 1000);
    Database reader(path, 1000);
    prepare_wal(writer.handle());
    // A small page cache makes big transactions spill frames into the WAL before their commit.
    writer.exec("PRAGMA cache_size=8");
    std::mt19937 rng(7);
    for (int round = 0; round < 120; ++round) {
      const int kind = static_cast<int>(rng() % 6);
      if (kind == 0) {
        // Big: several times the gathering buffer, with spills.
        insert_rows(writer.handle(), 40, 9000, round);
        rows += 40;
        bytes += 40 * 9000;
      } else if (kind == 1) {
        // Spilled, then rolled back: none of it may show.
        writer.exec("BEGIN");
        writer.exec("INSERT INTO t (k, v) SELECT 'gone', zeroblob(5000) FROM "
                    "(WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60) "
                    "SELECT i FROM n)");
        writer.exec("ROLLBACK");
      } else if (kind == 2) {
        // Checkpoint everything and start the log over (the next commit rewrites its header).
        reader.exec("PRAGMA wal_checkpoint(RESTART)");
      } else if (kind == 3) {
        writer.exec("UPDATE t SET v = zeroblob(length(v)) WHERE id % 7 = 0");
      } else {
        const int n = 1 + static_cast<int>(rng() % 5);
        insert_rows(writer.handle(), n, 300, round);
        rows += n;
        bytes += n * 300;
      }
      INFO("round " << round << ", kind " << kind);
      REQUIRE(reader.query_int("SELECT count(*) FROM t") == rows);
      REQUIRE(reader.query_int("SELECT coalesce(sum(length(v)), 0) FROM t") == bytes);
      REQUIRE(reader.query_int("SELECT count(*) FROM t WHERE k = 'gone'") == 0);
    }
    auto check = reader.prepare("PRAGMA integrity_check");
    REQUIRE(check->step());
    CHECK(check->column_text(0) == "ok");
  }
  // Closed and opened again: the WAL (or the checkpointed file) holds exactly the commits.
  Database again(path, 1000);
  CHECK(again.query_int("SELECT count(*) FROM t") == rows);
  CHECK(again.query_int("SELECT coalesce(sum(length(v)), 0) FROM t") == bytes);
}
