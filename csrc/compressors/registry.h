// Compressors by name: "topk" -> factory. Adding a method = one class + one line in registry.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "compressors/compressor.h"
#include "compressors/options.h"

namespace gradcomp {

// Builds the named method; unknown names and invalid options raise ValueError-type errors that
// list what is valid.
std::shared_ptr<const CompressionMethod> make_method(const std::string& name,
                                                     const Options& options);
// make_method for per-tensor compressors (every method but "powersgd").
std::shared_ptr<const Compressor> make_compressor(const std::string& name, const Options& options);

// Parses "name" or "name:key=value,key=value" (values are numbers) and builds the method.
std::shared_ptr<const CompressionMethod> make_method_from_spec(const std::string& spec);

// Registered names, sorted.
std::vector<std::string> compressor_names();

}  // namespace gradcomp
