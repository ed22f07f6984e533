// PowerSGD (Vogels et al., NeurIPS 2019): rank-r approximation of each gradient matrix by one
// step of subspace iteration, warm-started from the previous step's Q, with error feedback.
//
// Per bucket, two allreduce rounds:
//   round 1: [flag | dense tensors | P_1 .. P_L],  P = M Q (n x r), M = grad + residual (n x m)
//   between: orthonormalize the summed P's columns (one batched kernel call for all matrices);
//            Q_local = M^T P; residual = M - P Q_local^T (what this rank's gradient loses)
//   round 2: [Q_1 .. Q_L]  (m x r each), summed
//   decode:  Q = sum / world (kept as the next warm start); gradient = P Q^T;
//            dense tensors = sum / world.
// A tensor travels dense when it is 1-D, below min_numel, or when low rank would not save at
// least a factor min_compression: (n + m) * r * min_compression > n * m. Every small matrix
// of a bucket shares the same two messages, so a layer costs no collective of its own.
//
// Residuals and warm-start Q's are kept per parameter name (PyTorch's powerSGD_hook keys them
// by bucket index, which goes wrong when DDP rebuilds its buckets). Q starts from a normal
// draw of a generator seeded by (seed, parameter name), identical on every rank; torch's global
// RNG is never touched.
//
// Non-finite gradients, as in BucketCodec: a rank whose bucket holds an inf or NaN sets the flag,
// sends zeros and keeps its residuals; every rank then writes NaN into the bucket and keeps its
// warm-start Q as it was.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "compressors/bucket_codec.h"
#include "compressors/compressor.h"
#include "compressors/error_feedback.h"
#include "compressors/options.h"

namespace gradcomp {

class PowerSgd final : public CompressionMethod {
 public:
  PowerSgd(int64_t rank, double min_compression);
  static std::unique_ptr<PowerSgd> create(const Options& options);

  std::string name() const override { return "powersgd"; }
  std::string spec() const override;
  Collective collective() const override { return Collective::kLowRank; }
  int64_t rank() const { return rank_; }
  double min_compression() const { return min_compression_; }
  // The rank actually used for an n x m matrix, or 0 when it travels dense.
  int64_t rank_for(int64_t rows, int64_t cols) const;

 private:
  int64_t rank_;
  double min_compression_;
};

class PowerSgdCodec {
 public:
  // entries[i].rows: the parameter's first dimension (0 or 1 for 1-D parameters).
  // error_feedback may be null. warm_start holds the Q matrices (per parameter name) and must
  // not be null; keep it for the life of the training run (and checkpoint it).
  PowerSgdCodec(std::shared_ptr<const PowerSgd> method, std::vector<BucketEntry> entries,
                std::shared_ptr<ErrorFeedback> error_feedback,
                std::shared_ptr<ErrorFeedback> warm_start, uint64_t seed, int64_t world_size);

  int64_t first_numel() const { return first_numel_; }
  int64_t second_numel() const { return second_numel_; }
  int64_t bytes_sent() const { return 4 * (first_numel_ + second_numel_); }
  int64_t dense_bytes() const { return 4 * numel_; }
  int64_t numel() const { return numel_; }
  int64_t low_rank_matrices() const;

  // Round 1 message (float32, first_numel() elements). Keeps the matrices M for the next two
  // calls, so the three calls of one step must run in order, one step at a time per codec.
  // With measure, measured() holds the norms once encode_second has run (waits on CUDA).
  at::Tensor encode_first(const at::Tensor& bucket, bool measure = false);
  // first: round 1 after its allreduce (summed over ranks). Returns the round 2 message.
  at::Tensor encode_second(const at::Tensor& first);
  // Writes the averaged approximation into the bucket.
  DecodeOutcome decode(const at::Tensor& bucket, const at::Tensor& first, const at::Tensor& second);
  CodecMeasure measured() const { return measured_; }

 private:
  struct Placement {
    BucketEntry entry;
    int64_t rows = 0, cols = 0, rank = 0;  // rank 0: dense
    int64_t first_offset = 0;              // dense values or P in round 1
    int64_t second_offset = 0;             // Q in round 2
    int64_t residual_slot = -1;
    int64_t q_slot = -1;
    uint64_t tensor_key = 0;
  };

  void check_bucket(const at::Tensor& bucket) const;
  // Q from the previous step, or the initial draw when it is zero.
  at::Tensor warm_q(size_t placement, const at::Device& device);

  std::shared_ptr<const PowerSgd> method_;
  std::shared_ptr<ErrorFeedback> error_feedback_;
  std::shared_ptr<ErrorFeedback> warm_start_;
  uint64_t seed_;
  int64_t world_size_;
  std::vector<Placement> placements_;
  int64_t first_numel_ = 0, second_numel_ = 0, numel_ = 0, bucket_extent_ = 0;
  std::vector<at::Tensor> matrices_;  // M per placement (undefined for dense ones), one step
  bool skipped_ = false;              // this step's bucket was not finite here: keep residuals
  bool measuring_ = false;
  CodecMeasure measured_;
  // CUDA: the initial draw per placement, kept on the device so that replacing a zero Q needs
  // no host round trip each step.
  std::vector<at::Tensor> initial_q_;
};

}  // namespace gradcomp
