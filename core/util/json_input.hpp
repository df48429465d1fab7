// JSON that comes from outside acmo: a request body, `send --data`, a line of `send --file`, a
// message body taken from the queue, a dead-lettered body shown by `acmo dlq`. All of it is
// read by one parser with one set of rules, so that what one entry point refuses no other
// takes, and no input can exhaust the stack of a process that reads it.
#pragma once

#include <string_view>

#include <nlohmann/json.hpp>

#include "core/util/error.hpp"

namespace acmo {

// Objects and arrays nest at most this deep. An order event nests four levels
// (event, data, items, item); deeper nesting could only be an attack, and the recursive code
// that walks a document (writing it out, comparing it) must never see thousands of levels.
constexpr int k_max_json_depth = 64;

// Parse `text` as one JSON document, refusing what a lenient parser would take silently: a key
// given twice in one object (which value would count?), and nesting deeper than
// k_max_json_depth. Strings must be valid UTF-8. The parser itself keeps its state on the heap,
// so no input, however deep, reaches the recursion limit. An error is Errc::invalid_input with
// `field` as its field; its message starts with `what` ("the body", "--data", "line 3").
Expected<nlohmann::json> parse_json_input(std::string_view text, std::string_view what,
                                          std::string_view field = "body");

} // namespace acmo
