// The data directory: created when missing, also by several creators at once.
#include <sys/stat.h>

#include <atomic>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <thread>
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

TEST_CASE("ensure_directory: creators of the same new directory at once all succeed",
          "[paths]")
{
  TempDir dir;
  // Rounds of 8 creators (300 of them: the race is narrow; a check-then-create fails in
  // several rounds) released together on a new directory each time; every one of them must
  // find it created (by itself or another), none report it as not a directory. Threads race in
  // the file system as acmo processes started together do (a handler and a send), and cost a
  // fraction of a fork under the sanitizers.
  constexpr int k_creators = 8;
  for (int round = 0; round < 300; ++round) {
    const std::string data = dir.file("data" + std::to_string(round) + "/x/y");
    std::mutex mu;
    std::condition_variable cv;
    bool go = false;
    std::atomic<int> waiting{0};
    std::atomic<int> failed{0};
    std::vector<std::thread> creators;
    for (int k = 0; k < k_creators; ++k) {
      creators.emplace_back([&] {
        {
          std::unique_lock lock(mu);
          ++waiting;
          cv.wait(lock, [&] { return go; });
        }
        if (!ensure_directory(data)) ++failed;
      });
    }
    while (waiting.load() < k_creators) std::this_thread::yield();
    {
      std::lock_guard lock(mu);
      go = true;
    }
    cv.notify_all();
    for (auto& t : creators) t.join();
    INFO("round " << round);
    CHECK(failed.load() == 0);
  }
}
