#include <catch2/catch.hpp>

#include "core/util/suggest.hpp"

using acmo::closest_name;
using acmo::edit_distance;

TEST_CASE("edit distance counts insertions, deletions and substitutions")
{
  CHECK(edit_distance("", "") == 0);
  CHECK(edit_distance("send", "send") == 0);
  CHECK(edit_distance("", "send") == 4);
  CHECK(edit_distance("sned", "send") == 2); // a swap is two edits
  CHECK(edit_distance("sen", "send") == 1);
  CHECK(edit_distance("sendd", "send") == 1);
  CHECK(edit_distance("kitten", "sitting") == 3);
}

TEST_CASE("the closest name is suggested only when it is close")
{
  const std::vector<std::string> names = {"list", "show", "redrive", "purge"};
  CHECK(closest_name("lst", names) == "list");
  CHECK(closest_name("shwo", names) == "show");
  CHECK(closest_name("redrvie", names) == "redrive");
  CHECK(closest_name("banana", names).empty());
  CHECK(closest_name("list", names).empty()); // the word itself is no suggestion
  CHECK(closest_name("lsit", names, 1).empty());
  CHECK(closest_name("x", {}).empty());
}

TEST_CASE("a word cut short is taken for the only name it begins")
{
  const std::vector<std::string> flags = {"--order-id", "--data", "--dedup-id", "--group"};
  CHECK(closest_name("--order", flags) == "--order-id");
  CHECK(closest_name("--gr", flags) == "--group");
  CHECK(closest_name("--d", flags).empty());  // one character past the dashes
  CHECK(closest_name("--de", flags) == "--dedup-id");
  CHECK(closest_name("--dat", flags) == "--data"); // within two edits of it, too
  const std::vector<std::string> keys = {"queue.visibility_timeout", "queue.url",
                                         "store.url"};
  CHECK(closest_name("queue.vis", keys) == "queue.visibility_timeout");
  CHECK(closest_name("queue.", keys).empty()); // begins two names
  CHECK(closest_name("queue.url", keys).empty()); // a name itself is no suggestion
}
