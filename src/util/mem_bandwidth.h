// The machine's memory read bandwidth, measured: the roofline every decode speed is
// judged against (`kmq bench` reports achieved GB/s as a share of it; docs cite it).
#pragma once
#include <cstdint>

namespace kmq {

struct BandwidthResult {
  double gb_per_s = 0;       // best pass, 1e9 bytes per second
  double mean_gb_per_s = 0;  // mean over the timed passes
  int threads = 0;
  uint64_t bytes = 0;  // buffer size
  int passes = 0;      // timed passes (after one untimed warm-up pass)
};

// A multi-threaded streaming read over a buffer of `bytes` (choose it much larger than the
// last-level cache: 1 GiB by default), each of `threads` threads summing its contiguous
// slice with wide independent accumulators (so the loop is load-bound, not add-bound).
// The buffer is written first (so its pages exist), read once untimed, then `passes`
// times; the best pass is the bandwidth. Throws kmq::Error if the buffer cannot be had.
BandwidthResult measure_read_bandwidth(int threads, uint64_t bytes = uint64_t(1) << 30, int passes = 5);

}  // namespace kmq
