// The host-side tables of the segmented CUDA kernels (kernels/common/segments.h): every element
// in exactly one tile, slices per segment, and the segment lookup the kernels run on the device.
#include "kernels/common/segments.h"

#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <vector>

namespace gradcomp::kernels {
namespace {

TEST(Segments, TilesCoverEveryElementOnceInOrder) {
  const std::vector<int64_t> sizes{5, 0, 17, 16, 1, 0};
  for (const int64_t tile : {1, 4, 16, 100}) {
    const auto tiles = make_tiles(sizes, tile);
    std::vector<std::vector<int>> seen(sizes.size());
    for (size_t s = 0; s < sizes.size(); ++s) seen[s].assign(sizes[s], 0);
    int32_t last_segment = -1;
    for (const Tile& t : tiles) {
      ASSERT_GE(t.segment, last_segment) << "tiles in segment order";
      last_segment = t.segment;
      ASSERT_GE(t.count, 1);
      ASSERT_LE(t.count, tile);
      ASSERT_LE(t.begin + t.count, sizes[t.segment]);
      for (int64_t e = t.begin; e < t.begin + t.count; ++e) ++seen[t.segment][e];
    }
    for (size_t s = 0; s < sizes.size(); ++s) {
      for (int64_t e = 0; e < sizes[s]; ++e) EXPECT_EQ(seen[s][e], 1) << s << ":" << e;
    }
  }
}

TEST(Segments, TilesRejectBadSizes) {
  EXPECT_THROW(make_tiles({4}, 0), std::invalid_argument);
  EXPECT_THROW(make_tiles({4}, (int64_t{1} << 30) + 1), std::invalid_argument);
  EXPECT_THROW(make_tiles({4, -1}, 8), std::invalid_argument);
  EXPECT_TRUE(make_tiles({}, 8).empty());
  EXPECT_TRUE(make_tiles({0, 0}, 8).empty());
}

TEST(Segments, PrefixOffsets) {
  EXPECT_EQ(prefix_offsets({3, 0, 4}), (std::vector<int64_t>{0, 3, 3, 7}));
  EXPECT_EQ(prefix_offsets({}), (std::vector<int64_t>{0}));
}

TEST(Segments, SliceBlocksSplitEachSegment) {
  const auto blocks = make_slice_blocks({0, 10, 1000, 5000}, 100, 8);
  std::vector<int32_t> per_segment(4, 0);
  for (const SliceBlock& b : blocks) {
    ++per_segment[b.segment];
    EXPECT_LT(b.slice, b.slices);
  }
  // At least one block per segment (an empty list still needs its block to read the count),
  // about size / per_slice, at most max_slices.
  EXPECT_EQ(per_segment, (std::vector<int32_t>{1, 1, 8, 8}));
  for (const SliceBlock& b : blocks) EXPECT_EQ(b.slices, per_segment[b.segment]);
  EXPECT_THROW(make_slice_blocks({1}, 0, 8), std::invalid_argument);
  EXPECT_THROW(make_slice_blocks({1}, 8, 0), std::invalid_argument);
}

TEST(Segments, FindSegmentSkipsEmptySegments) {
  const std::vector<int64_t> sizes{3, 0, 0, 4, 1, 0};
  const auto offsets = prefix_offsets(sizes);
  const auto first = [&offsets](int32_t s) { return offsets[s]; };
  const auto count = static_cast<int32_t>(sizes.size());
  for (int64_t position = 0; position < offsets.back(); ++position) {
    const int32_t s = find_segment(count, position, first);
    EXPECT_LE(offsets[s], position);
    EXPECT_LT(position, offsets[s + 1]) << "position " << position << " in empty segment " << s;
  }
}

TEST(Segments, FindSegmentMatchesALinearScan) {
  std::mt19937 random(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int64_t> sizes(1 + random() % 20);
    for (auto& size : sizes) size = random() % 4 == 0 ? 0 : 1 + random() % 50;
    sizes.back() = std::max<int64_t>(sizes.back(), 1);
    const auto offsets = prefix_offsets(sizes);
    const auto first = [&offsets](int32_t s) { return offsets[s]; };
    for (int64_t position = 0; position < offsets.back(); ++position) {
      int32_t expected = 0;
      for (size_t s = 0; s < sizes.size(); ++s) {
        if (offsets[s] <= position && position < offsets[s + 1]) expected = static_cast<int32_t>(s);
      }
      ASSERT_EQ(find_segment(static_cast<int32_t>(sizes.size()), position, first), expected);
    }
  }
}

}  // namespace
}  // namespace gradcomp::kernels
