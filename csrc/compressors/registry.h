// Compressors by name: "topk" -> factory. Adding a method = one class + one line in registry.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "compressors/compressor.h"
#include "compressors/options.h"

namespace gradcomp {

// Builds the named compressor; unknown names and invalid options raise ValueError-type errors
// that list what is valid.
std::shared_ptr<const Compressor> make_compressor(const std::string& name, const Options& options);

// Registered names, sorted.
std::vector<std::string> compressor_names();

}  // namespace gradcomp
