#include <chrono>
#include <cstdint>
#include <limits>
#include <regex>
#include <set>
#include <string>

#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "core/util/ids.hpp"

using namespace acmo;

TEST_CASE("ids: format_sequence is 20 zero-padded digits that sort like the numbers", "[ids]")
{
  CHECK(format_sequence(1) == "00000000000000000001");
  CHECK(format_sequence(1234567890) == "00000000001234567890");
  const auto max = format_sequence(std::numeric_limits<int64_t>::max());
  CHECK(max == "09223372036854775807");
  CHECK(max.size() == 20);

  // Text order must equal numeric order, including across a change in the number of digits.
  std::string previous = format_sequence(0);
  for (int64_t seq : {int64_t{1}, int64_t{9}, int64_t{10}, int64_t{99}, int64_t{100},
                      int64_t{999'999}, int64_t{1'000'000}, std::numeric_limits<int64_t>::max()}) {
    const auto text = format_sequence(seq);
    CHECK(text.size() == 20);
    CHECK(text > previous);
    previous = text;
  }
}

TEST_CASE("ids: message ids are distinct version-7 UUIDs that carry the time they were drawn",
          "[ids]")
{
  const std::regex uuid_v7("^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$");
  const auto now_ms = [] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
  };
  const int64_t before = now_ms();
  std::set<std::string> seen;
  for (int i = 0; i < 10'000; ++i) {
    auto id = new_message_id();
    INFO(id);
    REQUIRE(std::regex_match(id, uuid_v7));
    seen.insert(id);
  }
  const int64_t after = now_ms();
  CHECK(seen.size() == 10'000);
  // The first 48 bits are the milliseconds since the epoch: within the loop's time.
  for (const auto& id : {*seen.begin(), *seen.rbegin()}) {
    INFO(id);
    const int64_t ms = std::stoll(id.substr(0, 8) + id.substr(9, 4), nullptr, 16);
    CHECK(ms >= before);
    CHECK(ms <= after);
  }
}

TEST_CASE("ids: generated order ids are ord_ and 20 base-32 characters", "[ids]")
{
  const std::regex order_id("^ord_[0-9a-hjkmnp-tv-z]{20}$");
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    auto id = new_order_id();
    INFO(id);
    REQUIRE(std::regex_match(id, order_id));
    seen.insert(id);
  }
  CHECK(seen.size() == 1000);
}

TEST_CASE("ids: a receipt handle decodes to the sequence and token it was made from", "[ids]")
{
  const auto max_seq = std::numeric_limits<int64_t>::max();
  const auto max_token = std::numeric_limits<uint64_t>::max();
  auto [seq, token] = GENERATE_COPY(table<int64_t, uint64_t>({
    {1, 1},
    {1, max_token},
    {42, 0x0123456789abcdefULL},
    {max_seq, 1},
    {max_seq, max_token},
    {1'000'000'007, 0x8000000000000000ULL},
  }));
  const auto text = encode_receipt(Receipt{seq, token});
  INFO(text);
  CHECK(text.size() == 24);
  CHECK(text.substr(0, 2) == "AQ");
  CHECK(text.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        == std::string::npos);
  auto back = decode_receipt(text);
  REQUIRE(back.has_value());
  CHECK(back->seq == seq);
  CHECK(back->token == token);
}

TEST_CASE("ids: text that is not a receipt handle acmo issued is rejected", "[ids]")
{
  const std::string valid = encode_receipt(Receipt{12345, 0xfeedfacecafebeefULL});
  REQUIRE(decode_receipt(valid).has_value());

  std::string last_bits_set = valid;
  {
    // 16 bytes take 22 base64 characters with 4 bits to spare; those must be zero.
    const std::string alphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    auto index = alphabet.find(valid.back());
    last_bits_set.back() = alphabet[(index & ~size_t{15}) | 1];
  }
  std::string wrong_tag = valid;
  wrong_tag[1] = 'B';
  std::string bad_char = valid;
  bad_char[10] = '+';

  auto garbage = GENERATE_COPY(values<std::string>({
    "",
    "AQ",
    "not-a-receipt-handle",
    valid.substr(0, 23),
    valid + "A",
    wrong_tag,
    bad_char,
    last_bits_set,
    encode_receipt(Receipt{0, 7}),   // sequence numbers start at 1
    encode_receipt(Receipt{-5, 7}),  // and are never negative
    encode_receipt(Receipt{7, 0}),   // token 0 means "not received"
    std::string(24, 'A'),
  }));
  INFO("text: \"" << garbage << "\"");
  CHECK_FALSE(decode_receipt(garbage).has_value());
}

// Regression: the per-thread generator was seeded once, so a process forked after drawing an id
// (a daemon forking workers, or the queue's process tests) continued the very sequence of its
// parent, and parent and child handed out the same message ids and receipt tokens.
TEST_CASE("ids: a forked child does not repeat its parent's ids", "[ids]")
{
  (void)new_message_id(); // the generator of this thread is seeded now
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::string id = new_message_id() + "\n";
    ssize_t written = ::write(fds[1], id.data(), id.size());
    ::_exit(written == static_cast<ssize_t>(id.size()) ? 0 : 1);
  }
  ::close(fds[1]);
  std::string child_id;
  char buf[64];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) child_id.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  REQUIRE(child_id.size() == 37);
  child_id.pop_back();
  CHECK(child_id != new_message_id());
}
