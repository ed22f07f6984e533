// Feeds corrupt and random payloads to every decoder for a bounded time: each call must either
// decode or throw a c10::Error, never read or write outside its tensors (built with ASan and
// UBSan in CI, which turn such an access into a failure) and never hang (ctest's timeout).
//
//   gradcomp_decoder_fuzz [--seconds S] [--seed N]     (the seed is new each run unless given)
//
// Inputs, per iteration, for a random method and tensor size: a real payload with random bytes
// overwritten, a real payload cut short or extended with random bytes, or random bytes of a
// random length; and whole bucket messages (BucketCodec::decode) mutated the same way, with
// random per-rank lengths for variable-size channels. A libFuzzer target would need clang,
// which this project's machines lack; this harness is the same idea with a PRNG.
#include <ATen/ATen.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "compressors/bucket_codec.h"
#include "compressors/error_feedback.h"
#include "compressors/registry.h"

namespace {

using gradcomp::Compressor;

struct Method {
  std::string spec;
  std::shared_ptr<const Compressor> compressor;
};

std::vector<Method> methods() {
  const std::vector<std::pair<std::string, gradcomp::Options>> specs{
      {"topk", {{"ratio", 0.05}}},
      {"topk_approx", {{"ratio", 0.05}}},
      {"topk_int8", {{"ratio", 0.05}}},
      {"topk_bitmap", {{"ratio", 0.05}}},
      {"topk", {{"ratio", 0.01}, {"min_k", 40}}},
      {"randomk", {{"ratio", 0.05}}},
      {"threshold", {{"density", 0.05}}},
      {"threshold", {{"tau", 0.5}}},
      {"qsgd", {{"bits", 2}}},
      {"qsgd", {{"bits", 4}, {"chunk", 64}}},
      {"qsgd", {{"bits", 8}}},
      {"sign", {{"chunk", 128}}},
      {"int8", {{"chunk", 64}}},
      {"fp16", {}},
      {"bf16", {}},
      {"none", {}},
  };
  std::vector<Method> out;
  for (const auto& [name, options] : specs) {
    auto c = gradcomp::make_compressor(name, options);
    out.push_back({c->spec(), c});
  }
  return out;
}

class Fuzzer {
 public:
  explicit Fuzzer(uint64_t seed) : rng_(seed) {}

  int64_t uniform(int64_t lo, int64_t hi) {  // inclusive
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
  }

  // Overwrites some bytes of t (any dtype) with random ones: a few, or many.
  void mutate(const at::Tensor& t) {
    const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
    if (bytes == 0) return;
    auto* data = static_cast<uint8_t*>(t.data_ptr());
    const int64_t flips = uniform(0, 3) == 0 ? uniform(1, bytes) : uniform(1, 8);
    for (int64_t i = 0; i < flips; ++i) {
      data[uniform(0, bytes - 1)] = static_cast<uint8_t>(uniform(0, 255));
    }
  }

  at::Tensor random_bytes_like(at::ScalarType dtype, int64_t numel) {
    auto t = at::empty({numel}, at::TensorOptions().dtype(dtype));
    auto* data = static_cast<uint8_t*>(t.data_ptr());
    for (int64_t i = 0; i < numel * static_cast<int64_t>(t.element_size()); ++i) {
      data[i] = static_cast<uint8_t>(uniform(0, 255));
    }
    return t;
  }

  // One payload decode; returns true when it threw a c10::Error (a rejection).
  bool decode_payload(const Method& m) {
    const auto& c = *m.compressor;
    const int64_t n = uniform(1, uniform(0, 1) ? 64 : 5000);
    const auto x = at::randn({n});
    const gradcomp::CompressContext ctx{static_cast<uint64_t>(uniform(0, 9)), uniform(0, 99),
                                        static_cast<uint64_t>(uniform(0, 1 << 30)), 0, 1.0};
    at::Tensor payload =
        at::empty({c.payload_numel(n)}, at::TensorOptions().dtype(c.payload_dtype()));
    const int64_t used = c.compress(x, payload, ctx);
    payload = payload.narrow(0, 0, used).clone();
    switch (uniform(0, 3)) {
      case 0:
        mutate(payload);
        break;
      case 1:  // cut short
        payload = payload.narrow(0, 0, uniform(0, payload.numel())).clone();
        mutate(payload);
        break;
      case 2:  // extended with garbage
        payload = at::cat({payload, random_bytes_like(payload.scalar_type(), uniform(1, 64))});
        mutate(payload);
        break;
      default:  // nothing but noise
        payload = random_bytes_like(c.payload_dtype(), uniform(0, 2 * c.payload_numel(n) + 16));
    }
    auto out = at::zeros({n});
    try {
      c.decompress_add(payload, out, ctx);
    } catch (const c10::Error&) {
      return true;
    }
    return false;
  }

  // One bucket: three simulated ranks' messages, mutated, decoded by rank 0's codec.
  bool decode_bucket(const std::vector<Method>& all) {
    const int64_t entries = uniform(1, 4), world = uniform(1, 3);
    std::vector<std::shared_ptr<const Compressor>> chosen;
    std::vector<gradcomp::BucketEntry> layout;
    int64_t offset = 0;
    for (int64_t i = 0; i < entries; ++i) {
      const int64_t numel = uniform(1, 3000);
      const bool compress = uniform(0, 3) != 0;
      chosen.push_back(all[uniform(0, static_cast<int64_t>(all.size()) - 1)].compressor);
      layout.push_back({"p" + std::to_string(i), offset, numel, compress, 0, i});
      offset += numel + uniform(0, 2);
    }
    std::vector<std::unique_ptr<gradcomp::BucketCodec>> codecs;
    for (int64_t r = 0; r < world; ++r) {
      codecs.push_back(std::make_unique<gradcomp::BucketCodec>(
          chosen, layout, std::make_shared<gradcomp::ErrorFeedback>(), 3, r, world));
    }
    const auto& channels = codecs[0]->channels();
    std::vector<std::vector<at::Tensor>> sent;
    for (int64_t r = 0; r < world; ++r) sent.push_back(codecs[r]->encode(at::randn({offset}), 5));
    std::vector<at::Tensor> received;
    std::vector<int64_t> used;
    for (size_t i = 0; i < channels.size(); ++i) {
      std::vector<at::Tensor> parts;
      for (int64_t r = 0; r < world; ++r) parts.push_back(sent[r][i]);
      if (channels[i].collective == gradcomp::Collective::kAllReduce) {
        auto total = parts[0].clone();
        for (int64_t r = 1; r < world; ++r) total.add_(parts[r]);
        received.push_back(total);
        continue;
      }
      int64_t stride = 0;
      for (const auto& p : parts) stride = std::max(stride, p.numel());
      if (channels[i].variable) {
        used.clear();
        for (auto& p : parts) {
          used.push_back(uniform(0, 4) == 0 ? uniform(-2, stride + 8) : p.numel());
          p = at::cat({p, at::zeros({stride - p.numel()}, p.options())});
        }
      }
      received.push_back(at::cat(parts));
    }
    const int64_t victim = uniform(0, static_cast<int64_t>(received.size()) - 1);
    mutate(received[victim]);
    if (uniform(0, 7) == 0)
      received[victim] = received[victim].narrow(0, 0, uniform(0, received[victim].numel()));
    auto bucket = at::zeros({offset});
    try {
      codecs[0]->decode(bucket, received, 5, used);
    } catch (const c10::Error&) {
      return true;
    }
    return false;
  }

 private:
  std::mt19937_64 rng_;
};

}  // namespace

int main(int argc, char** argv) {
  double seconds = 10.0;
  // A new seed every run (printed, so a failure reproduces with --seed).
  uint64_t seed = static_cast<uint64_t>(
      std::chrono::system_clock::now().time_since_epoch().count() & 0x7fffffffffffffffLL);
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--seconds") {
      seconds = std::atof(argv[i + 1]);
    } else if (flag == "--seed") {
      seed = std::strtoull(argv[i + 1], nullptr, 10);
    } else {
      std::fprintf(stderr, "unknown flag %s; usage: %s [--seconds S] [--seed N]\n", argv[i],
                   argv[0]);
      return 2;
    }
  }
  std::printf("decoder fuzz: seed %llu, %.0f s\n", static_cast<unsigned long long>(seed), seconds);
  std::fflush(stdout);
  at::manual_seed(static_cast<uint64_t>(seed));
  Fuzzer fuzzer(seed);
  const auto all = methods();
  std::map<std::string, std::pair<int64_t, int64_t>> counts;  // spec -> (runs, rejected)
  int64_t buckets = 0, buckets_rejected = 0;
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    for (const auto& m : all) {
      auto& [runs, rejected] = counts[m.spec];
      ++runs;
      rejected += fuzzer.decode_payload(m);
    }
    ++buckets;
    buckets_rejected += fuzzer.decode_bucket(all);
  }
  for (const auto& [spec, c] : counts) {
    std::printf("%-34s %8lld payloads, %8lld rejected\n", spec.c_str(),
                static_cast<long long>(c.first), static_cast<long long>(c.second));
  }
  std::printf("%-34s %8lld buckets,  %8lld rejected\n", "BucketCodec::decode",
              static_cast<long long>(buckets), static_cast<long long>(buckets_rejected));
  std::printf("decoder fuzz: no crash in %.0f s (seed %llu)\n", seconds,
              static_cast<unsigned long long>(seed));
  return 0;
}
