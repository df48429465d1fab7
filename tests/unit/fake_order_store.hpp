// An order store in memory, for the unit tests of what reads orders (the API, cached reads):
// orders by id and a change log whose size is the change feed's mark. A test can change what a
// read sees between its steps (on_get) and count the feed's questions.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/store/order_store.hpp"

namespace acmo::test {

// What the fake stores read: several FakeOrderStore objects (one per open_store) may share it.
struct FakeOrders {
  std::map<std::string, Order> by_id;
  std::vector<std::string> log; // the ids changed, in commit order
  std::function<void()> on_get; // run once, by the next get, after it read (found or not)
  int64_t questions = 0;        // changes_since calls

  void change(const std::string& id, const std::string& status)
  {
    by_id[id].id = id;
    by_id[id].status = status;
    log.push_back(id);
  }
};

// Orders by id and the change feed; lists and trails are empty.
class FakeOrderStore final : public OrderStore
{
public:
  explicit FakeOrderStore(FakeOrders& data) : m_data(data) {}

  Expected<Order> get(std::string_view id) override
  {
    auto it = m_data.by_id.find(std::string(id));
    Expected<Order> read = it == m_data.by_id.end()
                             ? Expected<Order>(make_error(Errc::not_found, "no such order", "id"))
                             : Expected<Order>(it->second);
    if (m_data.on_get) std::exchange(m_data.on_get, nullptr)();
    return read;
  }
  Expected<OrderList> list(std::string_view, int64_t, int64_t) override { return OrderList{}; }
  Expected<std::vector<OrderEventRecord>> events(std::string_view) override
  {
    return std::vector<OrderEventRecord>{};
  }
  Expected<OrderChanges> changes_since(int64_t mark, int64_t) override
  {
    ++m_data.questions;
    OrderChanges out;
    out.mark = static_cast<int64_t>(m_data.log.size());
    if (mark < 0 || mark > out.mark) {
      out.all = true;
      return out;
    }
    out.order_ids.assign(m_data.log.begin() + mark, m_data.log.end());
    return out;
  }

private:
  FakeOrders& m_data;
};

} // namespace acmo::test
