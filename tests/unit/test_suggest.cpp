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
