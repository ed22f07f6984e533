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

void OptionReader::finish() const {
  for (const auto& [key, value] : options_) {
    if (known_.count(key) != 0) continue;
    std::ostringstream valid;
    for (const auto& name : known_) valid << (valid.tellp() > 0 ? ", " : "") << name;
    TORCH_CHECK_VALUE(false, compressor_, ": unknown option '", key, "' (=", value,
                      "); valid options: ", known_.empty() ? "none" : valid.str());
  }
}

}  // namespace gradcomp
