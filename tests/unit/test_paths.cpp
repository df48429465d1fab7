// The data directory: created when missing, also by several processes at once.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <vector>

#include <catch2/catch.hpp>

#include "core/util/paths.hpp"
#include "unit/queue_test_util.hpp"
#include "unit/temp_dir.hpp"

using namespace acmo;
using acmo::test::must;
using acmo::test::must_fail;
using acmo::test::TempDir;

TEST_CASE("ensure_directory: creates the missing directory with its parents, mode 0700",
          "[paths]")
{
  TempDir dir;
  const std::string data = dir.file("a/b/data");
  must(ensure_directory(data));
  struct stat st {};
  REQUIRE(::stat(data.c_str(), &st) == 0);
  CHECK(S_ISDIR(st.st_mode));
  CHECK((st.st_mode & 0777) == 0700);
  must(ensure_directory(data)); // there already: fine
}

TEST_CASE("ensure_directory: a file in the way is a clear error", "[paths]")
{
  TempDir dir;
  const std::string file = dir.file("not-a-dir");
  std::ofstream(file) << "x";
  auto error = must_fail(ensure_directory(file));
  CHECK(error.code == Errc::invalid_input);
  CHECK(error.message.find("exists but is not a directory") != std::string::npos);
  error = must_fail(ensure_directory(file + "/below"));
  CHECK(error.code == Errc::unavailable);
  CHECK(error.message.find("cannot create the data directory") != std::string::npos);
}

TEST_CASE("ensure_directory: processes creating the same new directory at once all succeed",
          "[paths]")
{
  TempDir dir;
  // Rounds of 8 processes (300 of them: the race is narrow; the old check-then-create failed
  // about 9 of them) released together on a new directory each time; every one of them
  // must find it created (by itself or another), none report it as not a directory.
  for (int round = 0; round < 300; ++round) {
    const std::string data = dir.file("data" + std::to_string(round) + "/x/y");
    int go[2];
    REQUIRE(::pipe(go) == 0);
    std::vector<pid_t> kids;
    for (int k = 0; k < 8; ++k) {
      const pid_t pid = ::fork();
      REQUIRE(pid >= 0);
      if (pid == 0) {
        ::close(go[1]);
        char c;
        (void)!::read(go[0], &c, 1); // wait for the start
        ::_exit(ensure_directory(data) ? 0 : 1);
      }
      kids.push_back(pid);
    }
    ::close(go[0]);
    ::close(go[1]); // EOF releases every child at once
    for (pid_t pid : kids) {
      int status = 0;
      REQUIRE(::waitpid(pid, &status, 0) == pid);
      CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    }
  }
}
