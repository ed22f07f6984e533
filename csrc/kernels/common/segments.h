// Tables that let one kernel launch cover every entry ("segment") of a bucket: built once per
// bucket layout on the host, copied to the device once, read by the segmented CUDA kernels.
// Header-only parts are usable on the device; the builders are plain host code, tested on the
// CPU (tests/cpp/kernels/segments_test.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/common/philox.h"  // GRADCOMP_HOST_DEVICE

namespace gradcomp::kernels {

// One thread block's share of a segmented launch: `count` consecutive elements of segment
// `segment`, from element `begin` of that segment.
struct Tile {
  int64_t begin;
  int32_t segment;
  int32_t count;
};

// Tiles over segments of the given sizes: runs of at most `tile` elements (1 <= tile <= 2^30),
// in segment order; an empty segment gets none. Every element is in exactly one tile.
std::vector<Tile> make_tiles(const std::vector<int64_t>& sizes, int64_t tile);

// offsets[s] = sizes[0] + ... + sizes[s - 1], for s = 0 .. sizes.size().
std::vector<int64_t> prefix_offsets(const std::vector<int64_t>& sizes);

// Splits segment s into slices[s] parts of about `per_slice` elements (at least 1, at most
// max_slices each) and lists (segment, slice, slices) once per slice, in segment order:
// the blocks of a launch over lists whose length is known only on the device.
struct SliceBlock {
  int32_t segment;
  int32_t slice;
  int32_t slices;
};
std::vector<SliceBlock> make_slice_blocks(const std::vector<int64_t>& sizes, int64_t per_slice,
                                          int32_t max_slices);

// The segment s with first(s) <= position < first(s + 1), for a nondecreasing first() over
// s = 0 .. count - 1 with first(0) <= position: the last segment that starts at or before the
// position, so an empty segment is never returned when a later one starts at the same place.
template <typename First>
GRADCOMP_HOST_DEVICE int32_t find_segment(int32_t count, int64_t position, First first) {
  int32_t low = 0, high = count - 1;
  while (low < high) {
    const int32_t mid = low + (high - low + 1) / 2;
    if (first(mid) <= position) {
      low = mid;
    } else {
      high = mid - 1;
    }
  }
  return low;
}

}  // namespace gradcomp::kernels
