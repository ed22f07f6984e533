#include "compressors/registry.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <functional>
#include <map>
#include <sstream>

#include "compressors/dense_compressor.h"
#include "compressors/powersgd.h"
#include "compressors/quantize_compressor.h"
#include "compressors/randomk_compressor.h"
#include "compressors/threshold_compressor.h"
#include "compressors/topk_bitmap_compressor.h"
#include "compressors/topk_compressor.h"
#include "compressors/topk_int8_compressor.h"

namespace gradcomp {
namespace {

using Factory = std::function<std::unique_ptr<CompressionMethod>(const Options&)>;

template <typename Method>
Factory factory(std::unique_ptr<Method> (*create)(const Options&)) {
  return [create](const Options& options) -> std::unique_ptr<CompressionMethod> {
    return create(options);
  };
}

const std::map<std::string, Factory>& factories() {
  static const std::map<std::string, Factory> table{
      {"bf16", factory(&CastCompressor::create_bf16)},
      {"fp16", factory(&CastCompressor::create_fp16)},
      {"int8", factory(&QuantizeCompressor::create_int8)},
      {"none", factory(&DenseCompressor::create)},
      {"powersgd", factory(&PowerSgd::create)},
      {"qsgd", factory(&QuantizeCompressor::create_qsgd)},
      {"randomk", factory(&RandomKCompressor::create)},
      {"sign", factory(&QuantizeCompressor::create_sign)},
      {"threshold", factory(&ThresholdCompressor::create)},
      {"topk", factory(&TopKCompressor::create)},
      {"topk_approx", factory(&TopKCompressor::create_approx)},
      {"topk_bitmap", factory(&TopKBitmapCompressor::create)},
      {"topk_int8", factory(&TopKInt8Compressor::create)},
  };
  return table;
}

std::string trim(const std::string& s) {
  const auto begin = s.find_first_not_of(" \t");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t") - begin + 1);
}

}  // namespace

std::shared_ptr<const Compressor> make_compressor(const std::string& name, const Options& options) {
  auto method = make_method(name, options);
  auto compressor = std::dynamic_pointer_cast<const Compressor>(method);
  TORCH_CHECK_VALUE(compressor != nullptr, "'", name,
                    "' is not a per-tensor compressor (it works on whole buckets); use it "
                    "through gradcomp.register or its bucket codec");
  return compressor;
}

std::shared_ptr<const CompressionMethod> make_method_from_spec(const std::string& spec) {
  const auto colon = spec.find(':');
  const std::string name = trim(spec.substr(0, colon));
  TORCH_CHECK_VALUE(!name.empty(), "malformed compressor spec '", spec,
                    "': expected 'name' or 'name:key=value,...'");
  Options options;
  if (colon != std::string::npos) {
    std::string rest = spec.substr(colon + 1);
    size_t start = 0;
    while (start <= rest.size()) {
      const auto comma = rest.find(',', start);
      const std::string item =
          rest.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      const auto eq = item.find('=');
      const std::string key = trim(item.substr(0, eq));
      const std::string raw = eq == std::string::npos ? "" : trim(item.substr(eq + 1));
      char* end = nullptr;
      const double value = raw.empty() ? 0.0 : std::strtod(raw.c_str(), &end);
      TORCH_CHECK_VALUE(
          !key.empty() && !raw.empty() && end != nullptr && *end == '\0' && options.count(key) == 0,
          "malformed compressor spec '", spec, "': '", trim(item), "' is not a new 'key=number'");
      options[key] = value;
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  return make_method(name, options);
}

std::shared_ptr<const CompressionMethod> make_method(const std::string& name,
                                                     const Options& options) {
  const auto& table = factories();
  const auto it = table.find(name);
  if (it == table.end()) {
    std::ostringstream valid;
    for (const auto& entry : table) valid << (valid.tellp() > 0 ? ", " : "") << entry.first;
    TORCH_CHECK_VALUE(false, "unknown compressor '", name, "'; valid names: ", valid.str());
  }
  return it->second(options);
}

std::vector<std::string> compressor_names() {
  std::vector<std::string> names;
  for (const auto& entry : factories()) names.push_back(entry.first);
  return names;
}

}  // namespace gradcomp
