// acmo serve's API without a socket (daemon/api.*): a Request in, a Response out, over a real
// queue in a temporary directory and a fake order store. Routes, tokens, rate limits, the
// checks of a body, and the admin endpoints' refusal of what they do not know.
#include <algorithm>
#include <map>
#include <string>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "core/cache/cache.hpp"
#include "daemon/api.hpp"
#include "fake_order_store.hpp"
#include "queue_test_util.hpp"
#include "temp_dir.hpp"

using namespace acmo;
using namespace acmo::daemon;
using acmo::test::must;
using acmo::test::TempDir;

namespace {

struct ApiFixture {
  TempDir dir;
  std::unique_ptr<Queue> queue = acmo::test::open_queue(dir.file("acmo.db"));
  acmo::test::FakeOrders orders;
  MemoryCache cache{100, 60'000};
  std::unique_ptr<Api> api;

  explicit ApiFixture(ApiOptions options = {})
  {
    ApiParts parts;
    parts.queue = queue.get();
    parts.db_path = dir.file("acmo.db");
    parts.open_store = [this]() -> Expected<std::unique_ptr<OrderStore>> {
      return std::unique_ptr<OrderStore>(new acmo::test::FakeOrderStore(orders));
    };
    parts.cache = &cache;
    api = std::make_unique<Api>(std::move(options), std::move(parts));
    must(api->open());
  }

  Response call(std::string method, std::string path, std::string body = {},
                std::vector<std::pair<std::string, std::string>> headers = {},
                std::string client = "10.0.0.1")
  {
    Request r;
    r.method = std::move(method);
    const auto q = path.find('?');
    r.path = path.substr(0, q);
    if (q != std::string::npos) r.query = path.substr(q + 1);
    for (auto& [n, v] : headers) r.headers.add(n, v);
    r.body = std::move(body);
    r.client = std::move(client);
    return api->handle(r);
  }
};

const std::string k_order =
  R"({"customer_name":"Ada","customer_email":"ada@example.com","items":[]})";
const std::vector<std::pair<std::string, std::string>> k_json = {
  {"Content-Type", "application/json"}};

std::vector<std::pair<std::string, std::string>> with_token(const std::string& scheme,
                                                            const std::string& token)
{
  return {{"Authorization", scheme + " " + token}};
}

} // namespace

TEST_CASE("Api: routes: 404, 405 with Allow, OPTIONS", "[api]")
{
  ApiFixture f;
  CHECK(f.call("GET", "/nowhere").status == 404);
  auto r = f.call("PATCH", "/api/orders");
  CHECK(r.status == 405);
  CHECK(r.header("Allow") == "GET, POST");
  r = f.call("OPTIONS", "/api/orders");
  CHECK(r.status == 204);
  CHECK(r.header("Allow") == "GET, POST, OPTIONS");
  CHECK(f.call("HEAD", "/health").status == 200);
}

TEST_CASE("Api: POST queues the event once it is on disk; bad bodies are refused", "[api]")
{
  ApiFixture f;
  auto r = f.call("POST", "/api/orders", k_order, k_json);
  CHECK(r.status == 202);
  CHECK_THAT(r.body, Catch::Contains(R"("status":"queued")"));
  CHECK(must(f.queue->stats()).sent == 1);
  CHECK(f.call("POST", "/api/orders", k_order).status == 415);
  CHECK(f.call("POST", "/api/orders", "[1]", k_json).status == 400);
  CHECK(f.call("POST", "/api/orders", std::string(1000, '[') + std::string(1000, ']'), k_json).status
        == 400);
  CHECK(must(f.queue->stats()).sent == 1);
}

TEST_CASE("Api: the Bearer scheme is read in any letter case", "[api]")
{
  ApiOptions o;
  o.api_tokens = {"secret"};
  ApiFixture f(o);
  CHECK(f.call("GET", "/sqs/stats").status == 401);
  for (const char* scheme : {"Bearer", "bearer", "BEARER", "bEaReR"}) {
    INFO(scheme);
    CHECK(f.call("GET", "/sqs/stats", {}, with_token(scheme, "secret")).status == 200);
  }
  CHECK(f.call("GET", "/sqs/stats", {}, with_token("Basic", "secret")).status == 401);
  CHECK(f.call("GET", "/health").status == 200); // open
}

TEST_CASE("Api: admin routes need an admin token; an API token gets 403", "[api]")
{
  ApiOptions o;
  o.api_tokens = {"api"};
  o.admin_tokens = {"admin"};
  ApiFixture f(o);
  CHECK(f.call("DELETE", "/cache/clear").status == 401);
  CHECK(f.call("DELETE", "/cache/clear", {}, with_token("Bearer", "api")).status == 403);
  CHECK(f.call("DELETE", "/cache/clear", {}, with_token("Bearer", "admin")).status == 200);
  CHECK(f.call("GET", "/sqs/stats", {}, with_token("Bearer", "admin")).status == 200);
}

TEST_CASE("Api: a metrics token reads /metrics and nothing else", "[api][metrics]")
{
  ApiOptions o;
  o.api_tokens = {"api"};
  o.admin_tokens = {"admin"};
  o.metrics_tokens = {"scraper"};
  ApiFixture f(o);
  const auto scraper = with_token("Bearer", "scraper");
  CHECK(f.call("GET", "/metrics", {}, scraper).status == 200);
  CHECK(f.call("GET", "/metrics", {}, with_token("Bearer", "api")).status == 200);
  CHECK(f.call("GET", "/metrics", {}, with_token("Bearer", "admin")).status == 200);
  CHECK(f.call("GET", "/metrics").status == 401);
  CHECK(f.call("GET", "/metrics", {}, with_token("Bearer", "wrong")).status == 401);
  auto r = f.call("GET", "/api/orders", {}, scraper);
  CHECK(r.status == 403);
  CHECK_THAT(r.body, Catch::Contains("this token is a metrics token (server.metrics_tokens)"));
  CHECK(f.call("GET", "/sqs/stats", {}, scraper).status == 403);
  CHECK(f.call("POST", "/api/orders", k_order, {{"Content-Type", "application/json"},
                                                 {"Authorization", "Bearer scraper"}})
          .status
        == 403);
  CHECK(f.call("DELETE", "/cache/clear", {}, scraper).status == 403);
  CHECK(must(f.queue->stats()).sent == 0);

  SECTION("with no API tokens, metrics tokens still guard /metrics alone")
  {
    ApiOptions only;
    only.metrics_tokens = {"scraper"};
    ApiFixture g(only);
    CHECK(g.call("GET", "/metrics").status == 401);
    CHECK(g.call("GET", "/metrics", {}, scraper).status == 200);
    CHECK(g.call("GET", "/sqs/stats").status == 200); // the API itself asks for no token
  }
}

TEST_CASE("Api: server.metrics_open serves /metrics with no token", "[api][metrics]")
{
  ApiOptions o;
  o.api_tokens = {"api"};
  o.metrics_open = true;
  ApiFixture f(o);
  CHECK(f.call("GET", "/metrics").status == 200);
  CHECK(f.call("GET", "/metrics", {}, with_token("Bearer", "anything")).status == 200);
  CHECK(f.call("GET", "/sqs/stats").status == 401);
}

TEST_CASE("Api: /metrics by default takes an API token, as every API endpoint",
          "[api][metrics]")
{
  ApiOptions o;
  o.api_tokens = {"api"};
  ApiFixture f(o);
  CHECK(f.call("GET", "/metrics").status == 401);
  CHECK(f.call("GET", "/metrics", {}, with_token("Bearer", "api")).status == 200);
  CHECK(ApiFixture().call("GET", "/metrics").status == 200); // no tokens at all: open
}

TEST_CASE("Api: /metrics counts requests by the route's pattern and a fixed label for no route",
          "[api][metrics]")
{
  ApiFixture f;
  f.orders.by_id["ord_a"].id = "ord_a";
  CHECK(f.call("GET", "/api/orders/ord_a").status == 200);
  CHECK(f.call("GET", "/api/orders/ord_b").status == 404);
  CHECK(f.call("POST", "/api/orders", k_order, k_json).status == 202);
  CHECK(f.call("GET", "/nowhere/ord_a").status == 404);
  CHECK(f.call("PATCH", "/api/orders").status == 405);
  CHECK(f.call("BREW", "/coffee").status == 404);
  Request head;
  head.method = "POST";
  head.path = "/api/orders";
  head.client = "10.0.0.1";
  REQUIRE(f.api->refuse_early(head)); // no Content-Type: 415, counted once
  f.api->answered_by_connections(Response{408, {}, {}, {}, true});
  const std::string out = f.call("GET", "/metrics").body;
  INFO(out);
  for (const char* line : {
         R"(acmo_http_requests_total{method="GET",route="/api/orders/:id",code="200"} 1)",
         R"(acmo_http_requests_total{method="GET",route="/api/orders/:id",code="404"} 1)",
         R"(acmo_http_requests_total{method="POST",route="/api/orders",code="202"} 1)",
         R"(acmo_http_requests_total{method="POST",route="/api/orders",code="415"} 1)",
         R"(acmo_http_requests_total{method="GET",route="unmatched",code="404"} 1)",
         R"(acmo_http_requests_total{method="PATCH",route="unmatched",code="405"} 1)",
         R"(acmo_http_requests_total{method="other",route="unmatched",code="404"} 1)",
         R"(acmo_http_requests_total{method="other",route="unmatched",code="408"} 1)",
         R"(acmo_http_request_duration_seconds_count{method="GET",route="/api/orders/:id"} 2)",
         R"(acmo_http_request_duration_seconds_count{method="POST",route="/api/orders"} 1)"}) {
    CHECK_THAT(out, Catch::Contains(std::string(line) + "\n"));
  }
  CHECK_THAT(out, !Catch::Contains("ord_a") && !Catch::Contains("/nowhere"));
}

TEST_CASE("Api: failed authentications are limited per client address", "[api]")
{
  ApiOptions o;
  o.api_tokens = {"secret"};
  ApiFixture f(o);
  int unauthorized = 0;
  int limited = 0;
  for (int i = 0; i < 50; ++i) {
    const int status =
      f.call("GET", "/sqs/stats", {}, with_token("Bearer", "guess-" + std::to_string(i))).status;
    unauthorized += status == 401;
    limited += status == 429;
  }
  // Ten guesses at once, then (within this second) at most one more.
  CHECK(unauthorized >= 10);
  CHECK(unauthorized <= 11);
  CHECK(limited == 50 - unauthorized);
  // A valid token from that address still passes; another address may still fail on its own.
  CHECK(f.call("GET", "/sqs/stats", {}, with_token("Bearer", "secret")).status == 200);
  CHECK(f.call("GET", "/sqs/stats", {}, with_token("Bearer", "nope"), "10.0.0.2").status == 401);
}

TEST_CASE("Api: the rate limit is keyed on a valid token or the address, never on a made-up "
          "token",
          "[api]")
{
  SECTION("no tokens configured: a new bearer value per request gets no fresh bucket")
  {
    ApiOptions o;
    o.rate_limit = 1;
    o.rate_burst = 5;
    ApiFixture f(o);
    int accepted = 0;
    for (int i = 0; i < 30; ++i) {
      accepted += f.call("GET", "/sqs/stats", {}, with_token("Bearer", "made-up-" + std::to_string(i)))
                    .status
                  == 200;
    }
    CHECK(accepted >= 5);
    CHECK(accepted <= 6);
    // Another address has a bucket of its own.
    CHECK(f.call("GET", "/sqs/stats", {}, {}, "10.0.0.9").status == 200);
  }
  SECTION("a valid token has a bucket of its own, wherever it comes from")
  {
    ApiOptions o;
    o.api_tokens = {"a", "b"};
    o.rate_limit = 1;
    o.rate_burst = 2;
    ApiFixture f(o);
    int a = 0;
    for (int i = 0; i < 6; ++i) {
      a += f.call("GET", "/sqs/stats", {}, with_token("Bearer", "a"), "10.0.0." + std::to_string(i))
             .status
           == 200;
    }
    CHECK(a <= 3);
    CHECK(f.call("GET", "/sqs/stats", {}, with_token("Bearer", "b")).status == 200);
  }
}

TEST_CASE("Api: an admin endpoint refuses a value or a parameter it does not know", "[api]")
{
  ApiFixture f;
  must(f.queue->send(SendRequest{"m1", "g", ""}));
  auto r = f.call("DELETE", "/sqs/purge?queue=bogus");
  CHECK(r.status == 400);
  CHECK_THAT(r.body, Catch::Contains("queue \\\"bogus\\\" is not a queue here"));
  CHECK(f.call("DELETE", "/sqs/purge?queu=dlq").status == 400);
  CHECK(f.call("GET", "/sqs/dlq?limt=5").status == 400);
  CHECK(f.call("POST", "/sqs/dlq/redrive?ids=x").status == 400);
  CHECK(must(f.queue->stats()).visible == 1); // nothing was purged
  CHECK(f.call("DELETE", "/sqs/purge?queue=dlq").status == 200);
  CHECK(must(f.queue->stats()).visible == 1);
  r = f.call("DELETE", "/sqs/purge?queue=orders");
  CHECK(r.status == 200);
  CHECK(r.body == R"({"purged":1})");
}

TEST_CASE("Api: refuse_early answers what a request with Expect: 100-continue would get", "[api]")
{
  ApiOptions o;
  o.api_tokens = {"secret"};
  ApiFixture f(o);
  auto head = [](std::string method, std::string path, std::vector<std::pair<std::string, std::string>> headers) {
    Request r;
    r.method = std::move(method);
    r.path = std::move(path);
    r.client = "10.0.0.1";
    for (auto& [n, v] : headers) r.headers.add(n, v);
    return r;
  };
  auto refused = f.api->refuse_early(head("POST", "/nowhere", {}));
  REQUIRE(refused);
  CHECK(refused->status == 404);
  refused = f.api->refuse_early(head("POST", "/api/orders", {{"Content-Type", "application/json"}}));
  REQUIRE(refused);
  CHECK(refused->status == 401);
  refused = f.api->refuse_early(
    head("POST", "/api/orders", {{"Authorization", "Bearer secret"}, {"Content-Type", "text/plain"}}));
  REQUIRE(refused);
  CHECK(refused->status == 415);
  CHECK_FALSE(f.api->refuse_early(
    head("POST", "/api/orders", {{"Authorization", "Bearer secret"}, {"Content-Type", "application/json"}})));
}

TEST_CASE("Api: an Idempotency-Key belongs to its first request: a retry is a duplicate, "
          "another request with it is a 422",
          "[api]")
{
  ApiFixture f;
  auto key = [](const std::string& k) {
    return std::vector<std::pair<std::string, std::string>>{{"Content-Type", "application/json"},
                                                           {"Idempotency-Key", k}};
  };
  auto first = f.call("POST", "/api/orders", k_order, key("k-1"));
  REQUIRE(first.status == 202);
  auto retry = f.call("POST", "/api/orders", k_order, key("k-1"));
  CHECK(retry.status == 202);
  CHECK_THAT(retry.body, Catch::Contains(R"("duplicate":true)"));
  // The same key with another body, or for another order: refused, nothing queued.
  auto other_body = f.call("POST", "/api/orders",
                           R"({"customer_name":"Bob","customer_email":"b@example.com","items":[]})",
                           key("k-1"));
  CHECK(other_body.status == 422);
  CHECK_THAT(other_body.body, Catch::Contains("idempotency_key_reused")
                                && Catch::Contains("the Idempotency-Key \\\"k-1\\\" was used"));
  f.orders.by_id["ord_a"].id = "ord_a";
  f.orders.by_id["ord_b"].id = "ord_b";
  auto d = f.call("DELETE", "/api/orders/ord_a", {}, key("k-2"));
  REQUIRE(d.status == 202);
  CHECK(f.call("DELETE", "/api/orders/ord_b", {}, key("k-2")).status == 422);
  CHECK(f.call("PATCH", "/api/orders/ord_b/status", R"({"status":"shipped"})", key("k-2")).status
        == 422);
  CHECK(f.call("DELETE", "/api/orders/ord_a", {}, key("k-2")).status == 202);
  CHECK(must(f.queue->stats()).sent == 2);
}

TEST_CASE("Api: an UPDATE or DELETE of an order neither stored nor queued is refused at once",
          "[api]")
{
  ApiFixture f;
  const std::vector<std::pair<std::string, std::string>> json_type{
    {"Content-Type", "application/json"}};
  auto patch = [&](const std::string& id, std::vector<std::pair<std::string, std::string>> h) {
    return f.call("PATCH", "/api/orders/" + id + "/status", R"({"status":"processing"})", h);
  };
  auto nobody = patch("ord_nobody", json_type);
  CHECK(nobody.status == 404);
  CHECK_THAT(nobody.body, Catch::Contains("no order ord_nobody: it is neither in the store nor "
                                          "waiting in the queue"));
  CHECK(f.call("DELETE", "/api/orders/ord_nobody").status == 404);
  CHECK(must(f.queue->stats()).sent == 0);

  // In the store: accepted.
  f.orders.by_id["ord_stored"].id = "ord_stored";
  CHECK(patch("ord_stored", json_type).status == 202);
  // Created, not applied yet: its CREATE waits in the queue.
  auto created = f.call("POST", "/api/orders", k_order, json_type);
  REQUIRE(created.status == 202);
  const std::string id = nlohmann::json::parse(created.body).at("orderId").get<std::string>();
  CHECK(patch(id, json_type).status == 202);
  CHECK(must(f.queue->stats()).sent == 3);

  // Its CREATE applied while the request was checked: the store said no, then a handler applied
  // the CREATE and deleted its message, then the queue said no. The store knows it now: accepted.
  f.orders.on_get = [&] {
    CHECK(must(f.queue->purge()) == 3);
    f.orders.change(id, "pending");
  };
  CHECK(patch(id, json_type).status == 202);
  CHECK(must(f.queue->stats()).visible == 1);
  f.orders.by_id.erase(id);

  // A DELETE accepted, then applied (the order gone from the store): its retry with the same
  // Idempotency-Key is still its duplicate, not a 404.
  auto with_key = json_type;
  with_key.emplace_back("Idempotency-Key", "del-1");
  CHECK(f.call("DELETE", "/api/orders/ord_stored", {}, with_key).status == 202);
  f.orders.by_id.erase("ord_stored");
  auto retry = f.call("DELETE", "/api/orders/ord_stored", {}, with_key);
  CHECK(retry.status == 202);
  CHECK_THAT(retry.body, Catch::Contains(R"("duplicate":true)"));
  // Its DELETE still waits in the queue (no handler runs here), so the order is known there: a
  // second DELETE is let through, to be dead-lettered when applied (docs/orders.md §3).
  CHECK(f.call("DELETE", "/api/orders/ord_stored").status == 202);
}

TEST_CASE("Api: GET /sqs/groups shows the groups, blocked first; bad parameters are a 400",
          "[api]")
{
  ApiFixture f;
  must(f.queue->send(SendRequest{"a1", "A", ""}));
  must(f.queue->send(SendRequest{"a2", "A", ""}));
  must(f.queue->send(SendRequest{"b1", "B", ""}));
  must(f.queue->receive(1)); // a1 in flight: A is blocked

  auto r = f.call("GET", "/sqs/groups");
  REQUIRE(r.status == 200);
  auto doc = nlohmann::json::parse(r.body);
  REQUIRE(doc["groups"].size() == 2);
  CHECK(doc["groups"][0]["groupId"] == "A");
  CHECK(doc["groups"][0]["blocked"] == "inFlight");
  CHECK(doc["groups"][0]["depth"] == 2);
  CHECK(doc["groups"][0]["inFlight"] == 1);
  CHECK(doc["groups"][1]["blocked"].is_null());
  CHECK(doc["count"] == 2);
  CHECK(doc["omitted"] == 0);
  CHECK(doc["totals"] == nlohmann::json{{"groups", 2}, {"messages", 3}, {"inFlight", 1},
                                        {"blocked", 1}});
  for (const char* key : {"headMessageId", "headSequenceNumber", "headFirstSentAt", "headAgeMs",
                          "headVisibleAt"}) {
    CHECK(doc["groups"][1].contains(key));
  }
  doc = nlohmann::json::parse(f.call("GET", "/sqs/groups?blocked=true&limit=1").body);
  CHECK(doc["count"] == 1);
  CHECK(doc["groups"][0]["groupId"] == "A");
  doc = nlohmann::json::parse(f.call("GET", "/sqs/groups?limit=1").body);
  CHECK(doc["omitted"] == 1);
  CHECK(f.call("GET", "/sqs/groups?blocked=yes").status == 400);
  CHECK(f.call("GET", "/sqs/groups?limit=0").status == 400);
  CHECK(f.call("GET", "/sqs/groups?group=A").status == 400);
}

TEST_CASE("Api: the DLQ's filters choose what GET /sqs/dlq lists and what a redrive moves",
          "[api]")
{
  ApiFixture f;
  for (const char* body : {"m1", "m2", "m3"}) must(f.queue->send(SendRequest{body, body, ""}));
  auto got = must(f.queue->receive(10));
  REQUIRE(got.size() == 3);
  must(f.queue->dead_letter(got[0].receipt, "order ord_1 does not exist"));
  must(f.queue->dead_letter(got[1].receipt, "order ord_2 is cancelled"));
  must(f.queue->dead_letter(got[2].receipt, "order ord_3 does not exist"));

  auto doc = nlohmann::json::parse(f.call("GET", "/sqs/dlq?reason=does%20not%20exist").body);
  CHECK(doc["total"] == 2);
  CHECK(doc["messages"][1]["reason"] == "order ord_3 does not exist");
  CHECK(nlohmann::json::parse(f.call("GET", "/sqs/dlq?newerThan=1h").body)["total"] == 3);
  CHECK(nlohmann::json::parse(f.call("GET", "/sqs/dlq?olderThan=1h").body)["total"] == 0);

  // A bad value names the parameter and what to write.
  auto r = f.call("GET", "/sqs/dlq?olderThan=soon");
  CHECK(r.status == 400);
  CHECK_THAT(r.body, Catch::Contains("olderThan: \\\"soon\\\" is not a duration"));
  CHECK_THAT(r.body, Catch::Contains(R"("field":"olderThan")"));
  CHECK(f.call("GET", "/sqs/dlq?reason=").status == 400);
  CHECK(f.call("GET", "/sqs/dlq?olderThan=2h&newerThan=1h").status == 400);
  CHECK(f.call("POST", "/sqs/dlq/redrive?newerThan=0s").status == 400);
  CHECK(f.call("POST", "/sqs/dlq/redrive?id=" + got[0].message_id + "&reason=x").status == 400);
  CHECK(must(f.queue->stats()).dead_lettered == 3); // nothing moved

  r = f.call("POST", "/sqs/dlq/redrive?reason=DOES%20NOT%20EXIST");
  CHECK(r.status == 200);
  CHECK(r.body == R"({"redriven":2})");
  auto left = must(f.queue->dlq_list());
  REQUIRE(left.size() == 1);
  CHECK(left[0].body == "m2");
}

TEST_CASE("Api: a redrive takes a list of ids, and no other parameter twice", "[api]")
{
  ApiFixture f;
  for (const char* body : {"m1", "m2", "m3"}) must(f.queue->send(SendRequest{body, body, ""}));
  auto got = must(f.queue->receive(10));
  REQUIRE(got.size() == 3);
  for (const auto& m : got) must(f.queue->dead_letter(m.receipt, "order does not exist"));

  auto r = f.call("POST", "/sqs/dlq/redrive?reason=exist&reason=nothing");
  CHECK(r.status == 400);
  CHECK_THAT(r.body, Catch::Contains("\\\"reason\\\" is given more than once"));
  CHECK(must(f.queue->stats()).dead_lettered == 3); // nothing moved

  r = f.call("POST", "/sqs/dlq/redrive?id=" + got[0].message_id + "&id=" + got[2].message_id);
  CHECK(r.status == 200);
  CHECK(r.body == R"({"redriven":2})");
  auto left = must(f.queue->dlq_list());
  REQUIRE(left.size() == 1);
  CHECK(left[0].body == "m2");
}
