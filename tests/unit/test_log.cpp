#include <catch2/catch.hpp>

#include "core/util/log.hpp"

using acmo::log::printable;

TEST_CASE("log: printable writes control characters as escapes and keeps the rest",
          "[log]")
{
  // ESC, BEL and a newline could recolour or retitle a terminal, or forge a log line.
  CHECK(printable("\x1b]0;title\x07 and\nmore") == "\\x1b]0;title\\x07 and\\x0amore");
  CHECK(printable(std::string_view("nul\0", 4)) == "nul\\x00");
  CHECK(printable("del\x7f") == "del\\x7f");
  // C1 (U+0080 to U+009F) is a control too, in UTF-8 "\xc2\x80" to "\xc2\x9f".
  CHECK(printable("csi\xc2\x9b" "31m") == "csi\\u009b31m");
  // Other UTF-8 stays as it is: é, €, and U+00A0 just past C1.
  CHECK(printable("caf\xc3\xa9 \xe2\x82\xac \xc2\xa0") == "caf\xc3\xa9 \xe2\x82\xac \xc2\xa0");
  // What the caller keeps stays: the lines of a list of problems.
  CHECK(printable("one\ntwo\x1b", "\n") == "one\ntwo\\x1b");
  CHECK(printable("") == "");
}
