#include "kernels/common/segments.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace gradcomp::kernels {

std::vector<Tile> make_tiles(const std::vector<int64_t>& sizes, int64_t tile) {
  if (tile < 1 || tile > (int64_t{1} << 30)) {
    throw std::invalid_argument("make_tiles: tile=" + std::to_string(tile) +
                                " is out of range; valid: 1 to 2^30");
  }
  std::vector<Tile> tiles;
  for (size_t s = 0; s < sizes.size(); ++s) {
    if (sizes[s] < 0) {
      throw std::invalid_argument("make_tiles: segment " + std::to_string(s) + " has size " +
                                  std::to_string(sizes[s]) + "; valid: >= 0");
    }
    for (int64_t begin = 0; begin < sizes[s]; begin += tile) {
      tiles.push_back(
          {begin, static_cast<int32_t>(s), static_cast<int32_t>(std::min(tile, sizes[s] - begin))});
    }
  }
  return tiles;
}

std::vector<int64_t> prefix_offsets(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> offsets(sizes.size() + 1, 0);
  for (size_t s = 0; s < sizes.size(); ++s) offsets[s + 1] = offsets[s] + sizes[s];
  return offsets;
}

std::vector<SliceBlock> make_slice_blocks(const std::vector<int64_t>& sizes, int64_t per_slice,
                                          int32_t max_slices) {
  if (per_slice < 1 || max_slices < 1) {
    throw std::invalid_argument("make_slice_blocks: per_slice=" + std::to_string(per_slice) +
                                " and max_slices=" + std::to_string(max_slices) +
                                " must both be >= 1");
  }
  std::vector<SliceBlock> blocks;
  for (size_t s = 0; s < sizes.size(); ++s) {
    const int64_t wanted = (sizes[s] + per_slice - 1) / per_slice;
    const auto slices = static_cast<int32_t>(std::clamp<int64_t>(wanted, 1, max_slices));
    for (int32_t i = 0; i < slices; ++i) blocks.push_back({static_cast<int32_t>(s), i, slices});
  }
  return blocks;
}

}  // namespace gradcomp::kernels
