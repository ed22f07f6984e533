#include "compressors/registry.h"

#include <c10/util/Exception.h>

#include <functional>
#include <map>
#include <sstream>

#include "compressors/dense_compressor.h"
#include "compressors/topk_compressor.h"

namespace gradcomp {
namespace {

using Factory = std::function<std::unique_ptr<Compressor>(const Options&)>;

const std::map<std::string, Factory>& factories() {
  static const std::map<std::string, Factory> table{
      {"none", &DenseCompressor::create},
      {"topk", &TopKCompressor::create},
  };
  return table;
}

}  // namespace

std::shared_ptr<const Compressor> make_compressor(const std::string& name, const Options& options) {
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
