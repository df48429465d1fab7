// The embedded queue's index of its dedup history: the dedup log's rows (see schema.cpp) are
// indexed in memory by each process, which catches up by row id at the start of each write
// transaction, so that accepting a message appends to the log instead of writing into a
// randomly ordered index.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/util/ids.hpp"

namespace acmo::sqlite_queue {

// The dedup key of a dedup id: the first 16 bytes of its SHA-256.
struct DedupKey {
  uint64_t a = 0, b = 0;
  bool operator==(const DedupKey&) const = default;
};

struct DedupEntry {
  int64_t seq = 0;
  MessageIdBytes message_id{};
  int64_t expires_at = 0;
  int64_t body_hash = 0; // the first 8 bytes of the body's SHA-256; 0: not known
};

DedupKey dedup_key(std::string_view dedup_id);
// The key as the log's 16-byte blob (written into `buf`), and back.
std::string_view key_blob(const DedupKey& k, std::array<unsigned char, 16>& buf);
DedupKey key_from_blob(std::string_view blob);

// The in-memory index of the dedup log: an open-addressing hash table. Keys are SHA-256 bits,
// uniformly spread already, so a key's first word is its hash; one probe usually costs one
// cache miss, where a node-based map costs several (this lookup is on every send).
class DedupIndex
{
public:
  const DedupEntry* find(const DedupKey& key) const
  {
    if (m_slots.empty()) return nullptr;
    for (size_t i = slot_of(key);; i = (i + 1) & (m_slots.size() - 1)) {
      const Slot& slot = m_slots[i];
      if (!slot.used) return nullptr;
      if (slot.key == key) return &slot.entry;
    }
  }

  void put(const DedupKey& key, const DedupEntry& entry)
  {
    if ((m_count + 1) * 2 > m_slots.size()) grow();
    for (size_t i = slot_of(key);; i = (i + 1) & (m_slots.size() - 1)) {
      Slot& slot = m_slots[i];
      if (!slot.used) {
        slot = Slot{key, entry, true};
        ++m_count;
        return;
      }
      if (slot.key == key) {
        slot.entry = entry;
        return;
      }
    }
  }

  // Drop the entries that expired by `now` (rebuilds the table; there are no tombstones).
  void prune(int64_t now)
  {
    std::vector<Slot> old;
    old.swap(m_slots);
    m_count = 0;
    for (const auto& slot : old) {
      if (slot.used && slot.entry.expires_at > now) put(slot.key, slot.entry);
    }
  }

  void clear()
  {
    m_slots.clear();
    m_count = 0;
  }

private:
  struct Slot {
    DedupKey key;
    DedupEntry entry;
    bool used = false;
  };

  size_t slot_of(const DedupKey& key) const
  {
    return static_cast<size_t>(key.a) & (m_slots.size() - 1);
  }

  void grow()
  {
    std::vector<Slot> old;
    old.swap(m_slots);
    m_slots.resize(std::max<size_t>(1024, old.size() * 2));
    m_count = 0;
    for (const auto& slot : old) {
      if (slot.used) put(slot.key, slot.entry);
    }
  }

  std::vector<Slot> m_slots;
  size_t m_count = 0;
};

} // namespace acmo::sqlite_queue
