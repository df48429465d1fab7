// The request parser of acmo serve (daemon/http_parser.*): what it reads, byte by byte or all
// at once, and the framing it refuses (each refusal a way to smuggle a request past a proxy,
// or to make the server hold more than it should).
#include <string>

#include <catch2/catch.hpp>

#include "daemon/http_parser.hpp"

using namespace acmo::daemon;
using State = RequestParser::State;

namespace {

ParserLimits limits(size_t max_body = 1000)
{
  ParserLimits l;
  l.max_body = max_body;
  return l;
}

// Parse `text` whole; the parser is left with its result.
State parse_all(RequestParser& p, const std::string& text) { return p.parse(text); }

// The status a request is refused with (0: it parsed).
int refusal(const std::string& text, size_t max_body = 1000)
{
  RequestParser p(limits(max_body));
  const State s = p.parse(text);
  if (s == State::failed) return p.error_status();
  return s == State::done ? 0 : -1;
}

} // namespace

TEST_CASE("RequestParser: a request read at once and a byte at a time are the same", "[http]")
{
  const std::string text =
    "POST /api/orders?status=pending&limit=5 HTTP/1.1\r\nHost: x\r\nContent-Type: "
    "application/json\r\nContent-Length: 7\r\nX-Empty:\r\n\r\n{\"a\":1}GET /next";
  RequestParser whole(limits());
  REQUIRE(parse_all(whole, text) == State::done);
  RequestParser bytes(limits());
  State s = State::need_more;
  size_t fed = 0;
  while (s == State::need_more && fed < text.size()) s = bytes.parse(std::string_view(text).substr(0, ++fed));
  REQUIRE(s == State::done);
  for (RequestParser* p : {&whole, &bytes}) {
    Request& r = p->request();
    CHECK(r.method == "POST");
    CHECK(r.path == "/api/orders");
    CHECK(r.query == "status=pending&limit=5");
    CHECK(r.param("limit") == "5");
    CHECK(r.headers.get("content-type") == "application/json");
    CHECK(r.headers.has("X-Empty"));
    CHECK(r.body == "{\"a\":1}");
    CHECK(p->keep_alive());
    // What follows the request is the next one's.
    CHECK(text.substr(p->consumed()) == "GET /next");
  }
}

TEST_CASE("RequestParser: chunked bodies, with extensions and trailers", "[http]")
{
  RequestParser p(limits());
  const std::string text = "PUT /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n"
                           "4;name=v\r\nabcd\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\nrest";
  REQUIRE(p.parse(text) == State::done);
  CHECK(p.request().body == "abcd0123456789");
  CHECK(text.substr(p.consumed()) == "rest");
  // A byte at a time, too.
  RequestParser q(limits());
  State s = State::need_more;
  for (size_t n = 1; s == State::need_more && n <= text.size(); ++n) s = q.parse(std::string_view(text).substr(0, n));
  REQUIRE(s == State::done);
  CHECK(q.request().body == "abcd0123456789");
}

TEST_CASE("RequestParser: targets, versions and connection options", "[http]")
{
  SECTION("an absolute URI: its path and query are taken")
  {
    RequestParser p(limits());
    REQUIRE(p.parse("GET http://example.com:3000/api/orders/ord%5F1?x=%41 HTTP/1.1\r\nHost: "
                    "example.com\r\n\r\n")
            == State::done);
    CHECK(p.request().path == "/api/orders/ord_1");
    CHECK(p.request().param("x") == "A");
  }
  SECTION("an absolute URI without a path is /")
  {
    RequestParser p(limits());
    REQUIRE(p.parse("GET HTTP://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n") == State::done);
    CHECK(p.request().path == "/");
  }
  SECTION("OPTIONS *")
  {
    RequestParser p(limits());
    REQUIRE(p.parse("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n") == State::done);
    CHECK(p.request().path == "*");
  }
  SECTION("HTTP/1.0 closes unless asked to keep alive; 1.1 keeps alive unless asked to close")
  {
    RequestParser a(limits());
    REQUIRE(a.parse("GET / HTTP/1.0\r\n\r\n") == State::done);
    CHECK_FALSE(a.keep_alive());
    RequestParser b(limits());
    REQUIRE(b.parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n") == State::done);
    CHECK(b.keep_alive());
    RequestParser c(limits());
    REQUIRE(c.parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, close\r\n\r\n") == State::done);
    CHECK_FALSE(c.keep_alive());
  }
  SECTION("Expect: 100-continue is known once the head is in, before the body")
  {
    RequestParser p(limits());
    CHECK(p.parse("POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n")
          == State::need_more);
    CHECK(p.head_complete());
    CHECK(p.expects_continue());
    CHECK(p.parse("POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\nabc")
          == State::done);
  }
}

TEST_CASE("RequestParser: framing that two parsers could read differently is refused", "[http]")
{
  const std::string head = "POST /x HTTP/1.1\r\nHost: x\r\n";
  auto [text, status] = GENERATE_COPY(table<std::string, int>({
    {head + "Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400},
    {head + "Content-Length: 3, 4\r\n\r\nabcd", 400},
    {head + "Content-Length: +3\r\n\r\nabc", 400},
    {head + "Content-Length: 0x3\r\n\r\nabc", 400},
    {head + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
    {head + "Transfer-Encoding: gzip, chunked\r\n\r\n", 501},
    {head + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501},
    {head + "Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", 400},
    {head + "Transfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n", 400},
    {head + "Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", 400},
    {head + "Transfer-Encoding: chunked\r\n\r\n1234567890abcdef0\r\n", 400},
    {"POST /x HTTP/1.1\nHost: x\r\n\r\n", 400},
    {head + "X-Folded: a\r\n b\r\n\r\n", 400},
    {head + "X-Space : a\r\n\r\n", 400},
    {head + ": a\r\n\r\n", 400},
    {head + std::string("X-Nul: a\0b\r\n\r\n", 14), 400},
    {"GET /x HTTP/1.1\r\n\r\n", 400},
    {"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
    {"GET  /x HTTP/1.1\r\nHost: x\r\n\r\n", 400},
    {"GET /x\tHTTP/1.1\r\nHost: x\r\n\r\n", 400},
    {"GET x HTTP/1.1\r\nHost: x\r\n\r\n", 400},
    {"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400},
    {"GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400},
    {"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505},
    {"GET / HTTX/1.1\r\nHost: x\r\n\r\n", 400},
    {head + "Expect: something\r\nContent-Length: 1\r\n\r\nx", 417},
    {"GET /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
  }));
  INFO(text);
  CHECK(refusal(text) == status);
}

TEST_CASE("RequestParser: every limit is checked as the bytes come", "[http]")
{
  const std::string host = "Host: x\r\n";
  SECTION("a request line past its limit is refused before it ends")
  {
    CHECK(refusal("GET /" + std::string(9000, 'a')) == 414);
  }
  SECTION("a head past its limit is refused before it ends")
  {
    CHECK(refusal("GET / HTTP/1.1\r\nX-Big: " + std::string(70'000, 'b')) == 431);
  }
  SECTION("too many header fields")
  {
    std::string text = "GET / HTTP/1.1\r\n" + host;
    for (int i = 0; i < 100; ++i) text += "X-" + std::to_string(i) + ": y\r\n";
    CHECK(refusal(text + "\r\n") == 431);
  }
  SECTION("a Content-Length over the body limit is refused at the head")
  {
    CHECK(refusal("POST / HTTP/1.1\r\n" + host + "Content-Length: 1001\r\n\r\n") == 413);
    CHECK(refusal("POST / HTTP/1.1\r\n" + host + "Content-Length: 1000\r\n\r\n") == -1);
  }
  SECTION("a chunked body over the limit is refused at the chunk that passes it")
  {
    CHECK(refusal("POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n3e8\r\n"
                  + std::string(1000, 'x') + "\r\n1\r\n")
          == 413);
  }
}

TEST_CASE("RequestParser: reset starts on the next request", "[http]")
{
  const std::string text = "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
  RequestParser p(limits());
  REQUIRE(p.parse(text) == State::done);
  CHECK(p.request().path == "/a");
  const std::string rest = text.substr(p.consumed());
  p.reset();
  REQUIRE(p.parse(rest) == State::done);
  CHECK(p.request().path == "/b");
  CHECK(p.consumed() == rest.size());
}
