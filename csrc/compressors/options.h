// Named numeric options of a compressor ("ratio" -> 0.01), checked as they are read.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace gradcomp {

using Options = std::map<std::string, double>;

// Reads options for one compressor; finish() rejects any option that was never read, naming
// the valid ones, so a typo ("raito=0.01") is an error instead of a silent default.
class OptionReader {
 public:
  OptionReader(std::string compressor, const Options& options);

  // The value of `key`, or `fallback` when absent; must lie in the interval given by the bounds
  // (open or closed at each end, as the flags say).
  double real(const std::string& key, double fallback, double low, bool low_inclusive, double high,
              bool high_inclusive);
  // A 0/1 option (spec strings carry numbers only): "unbiased=1".
  bool flag(const std::string& key, bool fallback);
  // An integer option in [low, high].
  int64_t integer(const std::string& key, int64_t fallback, int64_t low, int64_t high);
  // An integer option that must be one of `allowed` (e.g. bits in {2, 4, 8}).
  int64_t choice(const std::string& key, int64_t fallback, const std::vector<int64_t>& allowed);
  void finish() const;

 private:
  std::string compressor_;
  const Options& options_;
  std::set<std::string> known_;
};

// Throws unless value is a finite number in (0, 1]: "<method>: <key>=<value> is out of range".
void check_fraction(const std::string& method, const char* key, double value);

}  // namespace gradcomp
