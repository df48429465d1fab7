#include "core/store/order_store.hpp"

#include <algorithm>

#include <fmt/core.h>

#include "core/queue/sqlite/sqlite_queue.hpp"
#include "core/sqlite/sqlite.hpp"
#include "core/util/ids.hpp"

namespace acmo {

namespace {

using nlohmann::json;

const std::string k_order_columns =
  "id, customer_name, customer_email, items, total_cents, status, version, created_at, updated_at";

Order read_order(sqlite::Statement& stmt)
{
  Order o;
  o.id = stmt.column_text(0);
  o.customer_name = stmt.column_text(1);
  o.customer_email = stmt.column_text(2);
  o.items = stored_items_from_json(stmt.column_view(3));
  o.total_cents = stmt.column_int(4);
  o.status = stmt.column_text(5);
  o.version = stmt.column_int(6);
  o.created_at_ms = stmt.column_int(7);
  o.updated_at_ms = stmt.column_int(8);
  return o;
}

std::optional<Order> find(sqlite::Database& db, std::string_view id)
{
  static const std::string k_sql = "SELECT " + k_order_columns + " FROM orders WHERE id = ?1";
  auto stmt = db.prepare(k_sql);
  stmt->bind(1, id);
  if (!stmt->step()) return std::nullopt;
  return read_order(*stmt);
}

// The order without its items: what applying an event needs to know.
std::optional<Order> find_head(sqlite::Database& db, std::string_view id)
{
  static const std::string k_sql =
    "SELECT status, version, created_at, updated_at FROM orders WHERE id = ?1";
  auto stmt = db.prepare(k_sql);
  stmt->bind(1, id);
  if (!stmt->step()) return std::nullopt;
  Order o;
  o.id = std::string(id);
  o.status = stmt->column_text(0);
  o.version = stmt->column_int(1);
  o.created_at_ms = stmt->column_int(2);
  o.updated_at_ms = stmt->column_int(3);
  return o;
}

void save(sqlite::Database& db, const Order& o)
{
  static const std::string k_sql =
    "INSERT INTO orders(" + k_order_columns
    + ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
      " ON CONFLICT(id) DO UPDATE SET customer_name = excluded.customer_name,"
      " customer_email = excluded.customer_email, items = excluded.items,"
      " total_cents = excluded.total_cents, status = excluded.status,"
      " version = excluded.version, updated_at = excluded.updated_at";
  auto stmt = db.prepare(k_sql);
  stmt->bind(1, o.id).bind(2, o.customer_name).bind(3, o.customer_email);
  stmt->bind(4, stored_items_json(o.items)).bind(5, o.total_cents).bind(6, o.status);
  stmt->bind(7, o.version).bind(8, o.created_at_ms).bind(9, o.updated_at_ms).run();
}

} // namespace

json order_events_json(const std::vector<OrderEventRecord>& events)
{
  json list = json::array();
  for (const auto& e : events) {
    list.push_back({{"messageId", e.message_id},
                    {"sequenceNumber", format_sequence(e.seq)},
                    {"type", e.type},
                    {"data", e.data},
                    {"acceptedAt", e.accepted_at_ms > 0 ? json(format_timestamp(e.accepted_at_ms))
                                                        : json(nullptr)},
                    {"appliedAt", format_timestamp(e.applied_at_ms)}});
  }
  return {{"events", std::move(list)}};
}

std::string stored_items_json(const std::vector<OrderItem>& items)
{
  json out = json::array();
  for (const auto& item : items) {
    out.push_back({{"product_id", item.product_id},
                   {"name", item.name},
                   {"quantity", item.quantity},
                   {"unit_price_cents", item.unit_price_cents}});
  }
  return out.dump();
}

std::vector<OrderItem> stored_items_from_json(std::string_view text)
{
  std::vector<OrderItem> out;
  json doc = json::parse(text.begin(), text.end(), nullptr, false);
  if (!doc.is_array()) return out;
  for (const auto& j : doc) {
    out.push_back(OrderItem{j.value("product_id", ""), j.value("name", ""),
                            j.value("quantity", int64_t{0}), j.value("unit_price_cents", int64_t{0})});
  }
  return out;
}

SqliteOrderStore::SqliteOrderStore(std::unique_ptr<sqlite::Database> db) : m_db(std::move(db)) {}

SqliteOrderStore::~SqliteOrderStore() = default;

Expected<std::unique_ptr<SqliteOrderStore>> SqliteOrderStore::open(const std::string& db_path)
{
  try {
    auto db = std::make_unique<sqlite::Database>(db_path, 30'000);
    db->exec("PRAGMA query_only=ON");
    return std::unique_ptr<SqliteOrderStore>(new SqliteOrderStore(std::move(db)));
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
}

namespace {

// Change the order as the event says, without its audit row.
Expected<void> apply_change(sqlite::Database& db, const AppliedEvent& applied, int64_t now_ms)
{
  static const std::string k_delete = "DELETE FROM orders WHERE id = ?1";
  const OrderEvent& e = applied.event;
  std::optional<Order> order = find_head(db, e.order_id);
  if (auto ok = apply_event(order, e, change_time(applied, now_ms)); !ok) return ok;
  switch (e.type) {
  case EventType::create:
    save(db, *order);
    break;
  case EventType::update: {
    // Only the status changes: no need to write the items again.
    static const std::string k_status =
      "UPDATE orders SET status = ?2, version = ?3, updated_at = ?4 WHERE id = ?1";
    auto stmt = db.prepare(k_status);
    stmt->bind(1, order->id).bind(2, order->status).bind(3, order->version);
    stmt->bind(4, order->updated_at_ms).run();
    break;
  }
  case EventType::remove:
    db.prepare(k_delete)->bind(1, e.order_id).run();
    break;
  }
  return {};
}

// Append the events to the audit trail, in order: one INSERT of up to k_audit_rows rows each.
void append_audit(sqlite::Database& db, const std::vector<const AppliedEvent*>& events,
                  int64_t now_ms)
{
  constexpr size_t k_audit_rows = 64;
  constexpr int k_columns = 7;
  // The statement for n rows, built once per n.
  static const auto k_sql = [] {
    std::vector<std::string> sql(k_audit_rows + 1);
    for (size_t n = 1; n <= k_audit_rows; ++n) {
      sql[n] = "INSERT INTO order_events(order_id, message_id, seq, type, data, applied_at,"
               " accepted_at) VALUES ";
      for (size_t row = 0; row < n; ++row) {
        sql[n] += row == 0 ? "(?, ?, ?, ?, ?, ?, ?)" : ", (?, ?, ?, ?, ?, ?, ?)";
      }
    }
    return sql;
  }();
  for (size_t first = 0; first < events.size(); first += k_audit_rows) {
    const size_t n = std::min(k_audit_rows, events.size() - first);
    auto stmt = db.prepare(k_sql[n]);
    for (size_t row = 0; row < n; ++row) {
      const AppliedEvent& applied = *events[first + row];
      const int base = static_cast<int>(row) * k_columns;
      stmt->bind(base + 1, applied.event.order_id).bind(base + 2, applied.message_id);
      stmt->bind(base + 3, applied.seq).bind(base + 4, event_type_name(applied.event.type));
      stmt->bind(base + 5, applied.event.data.dump()).bind(base + 6, now_ms);
      stmt->bind(base + 7, applied.accepted_at_ms);
    }
    stmt->run();
  }
}

} // namespace

Expected<std::vector<Expected<void>>>
SqliteOrderStore::apply_all(QueueTransaction& txn, const std::vector<const AppliedEvent*>& events,
                            int64_t now_ms)
{
  auto db = sqlite_connection(txn);
  if (!db) return Unexpected(db.error());
  return apply_all(**db, events, now_ms);
}

std::vector<Expected<void>> SqliteOrderStore::apply_all(
  sqlite::Database& db, const std::vector<const AppliedEvent*>& events, int64_t now_ms)
{
  std::vector<Expected<void>> out;
  out.reserve(events.size());
  std::vector<const AppliedEvent*> applied;
  applied.reserve(events.size());
  for (const AppliedEvent* e : events) {
    out.push_back(apply_change(db, *e, now_ms));
    if (out.back()) applied.push_back(e);
  }
  append_audit(db, applied, now_ms);
  return out;
}

Expected<Order> SqliteOrderStore::get(std::string_view id)
{
  try {
    auto order = find(*m_db, id);
    if (!order) {
      return make_error(Errc::not_found,
                        fmt::format("no order {}; `acmo orders list` shows the orders", id), "id");
    }
    return *order;
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
}

Expected<OrderList> SqliteOrderStore::list(std::string_view status, int64_t limit, int64_t offset)
{
  static const std::string k_all = "SELECT " + k_order_columns
                                   + " FROM orders ORDER BY created_at DESC, id LIMIT ?1 OFFSET ?2";
  static const std::string k_by_status =
    "SELECT " + k_order_columns
    + " FROM orders WHERE status = ?3 ORDER BY created_at DESC, id LIMIT ?1 OFFSET ?2";
  static const std::string k_count_all = "SELECT COUNT(*) FROM orders";
  static const std::string k_count_status = "SELECT COUNT(*) FROM orders WHERE status = ?1";
  try {
    OrderList out;
    m_db->exec("BEGIN"); // one snapshot for the page and the total
    {
      auto stmt = m_db->prepare(status.empty() ? k_all : k_by_status);
      stmt->bind(1, limit).bind(2, offset);
      if (!status.empty()) stmt->bind(3, status);
      while (stmt->step()) out.orders.push_back(read_order(*stmt));
    }
    {
      auto stmt = m_db->prepare(status.empty() ? k_count_all : k_count_status);
      if (!status.empty()) stmt->bind(1, status);
      if (stmt->step()) out.total = stmt->column_int(0);
    }
    m_db->exec("COMMIT");
    return out;
  } catch (const sqlite::SqliteError& e) {
    try {
      m_db->exec("ROLLBACK");
    } catch (const sqlite::SqliteError&) {
    }
    return Unexpected(e.to_error());
  }
}

Expected<std::vector<OrderEventRecord>> SqliteOrderStore::events(std::string_view id)
{
  static const std::string k_sql =
    "SELECT message_id, seq, type, data, applied_at, accepted_at FROM order_events"
    " WHERE order_id = ?1"
    " ORDER BY id";
  try {
    std::vector<OrderEventRecord> out;
    auto stmt = m_db->prepare(k_sql);
    stmt->bind(1, id);
    while (stmt->step()) {
      OrderEventRecord r;
      r.message_id = stmt->column_text(0);
      r.seq = stmt->column_int(1);
      r.type = stmt->column_text(2);
      auto text = stmt->column_view(3);
      r.data = json::parse(text.begin(), text.end(), nullptr, false);
      r.applied_at_ms = stmt->column_int(4);
      r.accepted_at_ms = stmt->column_int(5);
      out.push_back(std::move(r));
    }
    return out;
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
}

Expected<TrailPage> OrderStore::trail_since(int64_t, int64_t)
{
  return make_error(Errc::internal, "this order store keeps no feed of its audit trail");
}

Expected<TrailPage> SqliteOrderStore::trail_since(int64_t mark, int64_t max)
{
  static const std::string k_last = "SELECT coalesce(max(id), 0) FROM order_events";
  static const std::string k_since =
    "SELECT id, order_id, message_id, seq, type, data, applied_at, accepted_at FROM order_events"
    " WHERE id > ?1 ORDER BY id LIMIT ?2";
  try {
    TrailPage page;
    if (mark < 0) {
      page.mark = m_db->query_int(k_last);
      return page;
    }
    page.mark = mark;
    auto stmt = m_db->prepare(k_since);
    stmt->bind(1, mark).bind(2, max);
    while (stmt->step()) {
      TrailEntry e;
      e.id = stmt->column_int(0);
      e.order_id = stmt->column_text(1);
      e.event.message_id = stmt->column_text(2);
      e.event.seq = stmt->column_int(3);
      e.event.type = stmt->column_text(4);
      auto text = stmt->column_view(5);
      e.event.data = json::parse(text.begin(), text.end(), nullptr, false);
      e.event.applied_at_ms = stmt->column_int(6);
      e.event.accepted_at_ms = stmt->column_int(7);
      page.mark = e.id;
      page.entries.push_back(std::move(e));
    }
    return page;
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
}

Expected<OrderChanges> SqliteOrderStore::changes_since(int64_t mark, int64_t max)
{
  static const std::string k_last = "SELECT coalesce(max(id), 0) FROM order_events";
  static const std::string k_since =
    "SELECT id, order_id FROM order_events WHERE id > ?1 ORDER BY id LIMIT ?2";
  try {
    OrderChanges out;
    out.mark = std::max<int64_t>(mark, 0);
    if (mark >= 0) {
      auto stmt = m_db->prepare(k_since);
      stmt->bind(1, mark).bind(2, max + 1);
      while (stmt->step()) {
        out.mark = stmt->column_int(0);
        out.order_ids.push_back(stmt->column_text(1));
      }
      if (static_cast<int64_t>(out.order_ids.size()) <= max) return out;
    }
    // Too many to name, or no mark yet: everything, up to the last row.
    out.all = true;
    out.order_ids.clear();
    auto stmt = m_db->prepare(k_last);
    if (stmt->step()) out.mark = std::max(out.mark, stmt->column_int(0));
    return out;
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
}

Expected<std::vector<ApplyOutcome>> OrderWriter::apply_in(QueueTransaction&,
                                                        const std::vector<AppliedEvent>&, int64_t)
{
  return make_error(Errc::internal,
                    "this order store cannot apply inside the queue's transaction");
}

} // namespace acmo
