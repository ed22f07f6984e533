#include "compressors/options.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <sstream>

namespace gradcomp {

OptionReader::OptionReader(std::string compressor, const Options& options)
    : compressor_(std::move(compressor)), options_(options) {}

double OptionReader::real(const std::string& key, double fallback, double low, bool low_inclusive,
                          double high, bool high_inclusive) {
  known_.insert(key);
  const auto it = options_.find(key);
  const double value = it == options_.end() ? fallback : it->second;
  const bool above = low_inclusive ? value >= low : value > low;
  const bool below = high_inclusive ? value <= high : value < high;
  TORCH_CHECK_VALUE(std::isfinite(value) && above && below, compressor_, ": ", key, "=", value,
                    " is out of range; valid: ", key, " in ", low_inclusive ? "[" : "(", low, ", ",
                    high, high_inclusive ? "]" : ")");
  return value;
}

bool OptionReader::flag(const std::string& key, bool fallback) {
  known_.insert(key);
  const auto it = options_.find(key);
  if (it == options_.end()) return fallback;
  TORCH_CHECK_VALUE(it->second == 0.0 || it->second == 1.0, compressor_, ": ", key, "=", it->second,
                    " is not a flag; valid: ", key, "=0 or ", key, "=1");
  return it->second == 1.0;
}

int64_t OptionReader::integer(const std::string& key, int64_t fallback, int64_t low, int64_t high) {
  known_.insert(key);
  const auto it = options_.find(key);
  if (it == options_.end()) return fallback;
  const double value = it->second;
  TORCH_CHECK_VALUE(std::isfinite(value) && value == std::floor(value) &&
                        value >= static_cast<double>(low) && value <= static_cast<double>(high),
                    compressor_, ": ", key, "=", value, " is out of range; valid: an integer ", key,
                    " in [", low, ", ", high, "]");
  return static_cast<int64_t>(value);
}

int64_t OptionReader::choice(const std::string& key, int64_t fallback,
                             const std::vector<int64_t>& allowed) {
  known_.insert(key);
  const auto it = options_.find(key);
  if (it == options_.end()) return fallback;
  for (const int64_t v : allowed) {
    if (it->second == static_cast<double>(v)) return v;
  }
  std::ostringstream valid;
  for (const int64_t v : allowed) valid << (valid.tellp() > 0 ? ", " : "") << v;
  TORCH_CHECK_VALUE(false, compressor_, ": ", key, "=", it->second, " is not allowed; valid: ", key,
                    " in {", valid.str(), "}");
  return fallback;
}

void OptionReader::finish() const {
  for (const auto& [key, value] : options_) {
    if (known_.count(key) != 0) continue;
    std::ostringstream valid;
    for (const auto& name : known_) valid << (valid.tellp() > 0 ? ", " : "") << name;
    TORCH_CHECK_VALUE(false, compressor_, ": unknown option '", key, "' (=", value,
                      "); valid options: ", known_.empty() ? "none" : valid.str());
  }
}

void check_fraction(const std::string& method, const char* key, double value) {
  TORCH_CHECK_VALUE(std::isfinite(value) && value > 0.0 && value <= 1.0, method, ": ", key, "=",
                    value, " is out of range; valid: ", key, " in (0, 1]");
}

}  // namespace gradcomp
