// An RAII temporary directory for tests that need real files (SQLite databases, pipes' logs).
#pragma once

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <system_error>

namespace acmo::test {

// Creates a fresh directory under /tmp (mkdtemp, so concurrent test runs never share one) and
// removes it with everything in it when it goes out of scope.
class TempDir
{
public:
  TempDir()
  {
    std::string templ = "/tmp/acmo-test-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) {
      throw std::runtime_error("mkdtemp failed for " + templ);
    }
    m_path = templ;
  }
  ~TempDir()
  {
    // A destructor must not throw; a leftover directory in /tmp is the lesser harm.
    std::error_code ignored;
    std::filesystem::remove_all(m_path, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return m_path; }
  // The path of `name` inside the directory, as a string for APIs that take one.
  std::string file(const std::string& name) const { return (m_path / name).string(); }

private:
  std::filesystem::path m_path;
};

} // namespace acmo::test
