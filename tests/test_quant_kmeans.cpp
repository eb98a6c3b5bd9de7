// Tests of the 1-D k-means solvers: exact DP against brute force, degenerate inputs,
// distortion against the Lloyd-Max optimum, the large-n method against the exact DP.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <string>

#include "kmq/error.h"
#include "kmq/quant.h"
#include "test_util.h"

using namespace kmq;

namespace {

// Weighted SSE of x against the nearest of the centroids (evaluated in double).
double sse(const std::vector<float>& x, const std::vector<float>* w, const std::vector<float>& c) {
  double e = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    double best = std::numeric_limits<double>::infinity();
    for (float ci : c) best = std::min(best, std::fabs(double(x[i]) - double(ci)));
    e += (w ? double((*w)[i]) : 1.0) * best * best;
  }
  return e;
}

// Minimum weighted SSE over every assignment of the n points to k labels (k^n of them),
// walked as an odometer with per-label sums updated as digits change.
double brute_force(const std::vector<float>& x, const std::vector<float>* w, int k) {
  const size_t n = x.size();
  std::vector<int> lab(n, 0);
  double W[4] = {}, S[4] = {}, Q[4] = {};
  auto move = [&](size_t i, int from, int to) {
    const double wi = w ? double((*w)[i]) : 1.0, xi = x[i];
    W[from] -= wi, S[from] -= wi * xi, Q[from] -= wi * xi * xi;
    W[to] += wi, S[to] += wi * xi, Q[to] += wi * xi * xi;
  };
  for (size_t i = 0; i < n; ++i) {
    const double wi = w ? double((*w)[i]) : 1.0, xi = x[i];
    W[0] += wi, S[0] += wi * xi, Q[0] += wi * xi * xi;
  }
  double best = std::numeric_limits<double>::infinity();
  for (;;) {
    double cost = 0;
    for (int j = 0; j < k; ++j)
      if (W[j] > 1e-9) cost += Q[j] - S[j] * S[j] / W[j];
    best = std::min(best, cost);
    size_t i = 0;  // next labelling
    while (i < n && lab[i] == k - 1) {
      move(i, k - 1, 0);
      lab[i++] = 0;
    }
    if (i == n) break;
    move(i, lab[i], lab[i] + 1);
    ++lab[i];
  }
  return best;
}

// Minimum weighted SSE into at most k clusters by the plain O(k n^2) DP over sorted
// values (no monotonicity assumed): checks the bounded searches of the library's DP.
double naive_dp(std::vector<float> x, std::vector<float> w, int k) {
  const size_t n = x.size();
  std::vector<size_t> ord(n);
  for (size_t i = 0; i < n; ++i) ord[i] = i;
  std::sort(ord.begin(), ord.end(), [&](size_t a, size_t b) { return x[a] < x[b]; });
  std::vector<double> W(n + 1, 0), S(n + 1, 0), Q(n + 1, 0);
  for (size_t i = 0; i < n; ++i) {
    const double wi = w.empty() ? 1.0 : w[ord[i]], xi = x[ord[i]];
    W[i + 1] = W[i] + wi;
    S[i + 1] = S[i] + wi * xi;
    Q[i + 1] = Q[i] + wi * xi * xi;
  }
  auto cost = [&](size_t a, size_t b) {
    const double ww = W[b] - W[a], ss = S[b] - S[a];
    return ww > 0 ? std::max(0.0, Q[b] - Q[a] - ss * ss / ww) : 0.0;
  };
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> prev(n + 1, inf), cur(n + 1);
  for (size_t i = 0; i <= n; ++i) prev[i] = cost(0, i);
  for (int L = 2; L <= k; ++L) {
    for (size_t i = 0; i <= n; ++i) {
      cur[i] = prev[i];  // at most k clusters: an empty one is allowed
      for (size_t t = 0; t < i; ++t) cur[i] = std::min(cur[i], prev[t] + cost(t, i));
    }
    std::swap(prev, cur);
  }
  return prev[n];
}

std::vector<float> uniform_floats(size_t n, uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

void check_sorted(const std::vector<float>& c) { CHECK(std::is_sorted(c.begin(), c.end())); }

}  // namespace

TEST_CASE("kmeans_1d exact DP matches brute force over all partitions") {
  int cases = 0;
  for (int n = 1; n <= 12; ++n) {
    for (int k = 2; k <= 4; ++k) {
      for (int weighted = 0; weighted < 2; ++weighted) {
        for (uint64_t seed = 0; seed < 3; ++seed) {
          auto x = test::random_floats(n, 1000 * n + 10 * k + seed);
          auto w = uniform_floats(n, 7 + seed + 31 * n, 0.1f, 2.0f);
          const std::vector<float>* wp = weighted ? &w : nullptr;
          auto c = kmeans_1d(x.data(), weighted ? w.data() : nullptr, n, k, 4096, 30, 1);
          REQUIRE(c.size() == size_t(k));
          check_sorted(c);
          const double got = sse(x, wp, c), want = brute_force(x, wp, k);
          CHECK(got == doctest::Approx(want).epsilon(1e-6).scale(1.0));
          ++cases;
        }
      }
    }
  }
  CHECK(cases == 12 * 3 * 2 * 3);
}

TEST_CASE("kmeans_1d exact DP matches the plain O(k n^2) DP") {
  // Sizes past the divide-and-conquer leaves; integer data has ties and repeated values.
  std::mt19937_64 rng(99);
  int cases = 0;
  for (int64_t n : {17, 40, 100, 257, 400}) {
    for (int k : {2, 3, 5, 8, 16}) {
      for (int kind = 0; kind < 3; ++kind) {
        std::vector<float> x = test::random_floats(n, rng());
        std::vector<float> w;
        if (kind == 1)
          for (auto& v : x) v = float(int(v * 6.0f));  // ~30 distinct values, many repeats
        if (kind == 2) w = uniform_floats(n, rng(), 0.05f, 4.0f);
        const std::vector<float>* wp = w.empty() ? nullptr : &w;
        auto c = kmeans_1d(x.data(), w.empty() ? nullptr : w.data(), n, k, n, 30, 1);
        const double got = sse(x, wp, c), want = naive_dp(x, w, k);
        // Float centroids: the SSE may exceed the optimum by a rounding sliver.
        CHECK(got == doctest::Approx(want).epsilon(1e-6).scale(1e-6));
        ++cases;
      }
    }
  }
  CHECK(cases == 75);
}

TEST_CASE("kmeans_1d recovers plateaus exactly (both methods)") {
  for (int k : {2, 4, 8, 16}) {
    for (int64_t exact_max : {int64_t(1) << 30, int64_t(0)}) {
      auto levels = test::random_floats(k, 50 + k);
      std::sort(levels.begin(), levels.end());
      std::mt19937_64 rng(k);
      std::vector<float> x(20000);
      for (auto& v : x) v = levels[rng() % k];
      for (int i = 0; i < k; ++i) x[i] = levels[i];  // every level present
      auto c = kmeans_1d(x.data(), nullptr, int64_t(x.size()), k, exact_max, 30, 1);
      CHECK(c == levels);
      CHECK(sse(x, nullptr, c) == 0.0);
      // Fewer distinct values than k: each is a centroid, the rest duplicates.
      auto c2 = kmeans_1d(x.data(), nullptr, int64_t(x.size()), 2 * k, exact_max, 30, 1);
      check_sorted(c2);
      CHECK(std::set<float>(c2.begin(), c2.end()) == std::set<float>(levels.begin(), levels.end()));
      CHECK(sse(x, nullptr, c2) == 0.0);
    }
  }
}

TEST_CASE("kmeans_1d degenerate inputs") {
  SUBCASE("constant data") {
    for (int64_t exact_max : {int64_t(1) << 30, int64_t(0)}) {
      std::vector<float> x(5000, 0.375f);
      auto c = kmeans_1d(x.data(), nullptr, 5000, 16, exact_max, 30, 1);
      for (float v : c) CHECK(v == 0.375f);
      std::vector<float> z(5000, 0.0f);
      c = kmeans_1d(z.data(), nullptr, 5000, 4, exact_max, 30, 1);
      for (float v : c) CHECK(v == 0.0f);
    }
  }
  SUBCASE("n < k") {
    std::vector<float> x = {0.5f, -1.25f, 3.0f};
    auto c = kmeans_1d(x.data(), nullptr, 3, 8, 4096, 30, 1);
    check_sorted(c);
    CHECK(std::set<float>(c.begin(), c.end()) == std::set<float>{-1.25f, 0.5f, 3.0f});
    auto l = kmeans_1d_lloyd(x.data(), nullptr, 3, 8, 30, 1);
    check_sorted(l);
    CHECK(std::set<float>(l.begin(), l.end()) == std::set<float>{-1.25f, 0.5f, 3.0f});
  }
  SUBCASE("n = 0 gives zeros") {
    auto c = kmeans_1d(nullptr, nullptr, 0, 4, 4096, 30, 1);
    CHECK(c == std::vector<float>(4, 0.0f));
  }
  SUBCASE("k = 1 is the weighted mean") {
    std::vector<float> x = {1, 2, 4}, w = {1, 1, 2};
    auto c = kmeans_1d(x.data(), w.data(), 3, 1, 4096, 30, 1);
    CHECK(c[0] == doctest::Approx(2.75));
  }
  SUBCASE("zero weights are ignored, all-zero weights fit unweighted") {
    auto x = test::random_floats(300, 5);
    std::vector<float> w(300, 1.0f);
    auto ref = kmeans_1d(x.data(), nullptr, 300, 4, 4096, 30, 1);
    std::vector<float> x2 = x, w2 = w;
    x2.push_back(100.0f);  // an outlier with weight 0 changes nothing
    w2.push_back(0.0f);
    CHECK(kmeans_1d(x2.data(), w2.data(), 301, 4, 4096, 30, 1) == ref);
    std::vector<float> zero(300, 0.0f);
    CHECK(kmeans_1d(x.data(), zero.data(), 300, 4, 4096, 30, 1) == ref);
  }
  SUBCASE("bad input throws") {
    std::vector<float> x = {1.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f};
    CHECK_THROWS_AS(kmeans_1d(x.data(), nullptr, 3, 2, 4096, 30, 1), Error);
    x[1] = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS(kmeans_1d(x.data(), nullptr, 3, 2, 4096, 30, 1), Error);
    CHECK_THROWS_AS(kmeans_1d_lloyd(x.data(), nullptr, 3, 2, 30, 1), Error);
    x[1] = 0.5f;
    std::vector<float> w = {1.0f, -1.0f, 1.0f};
    CHECK_THROWS_AS(kmeans_1d(x.data(), w.data(), 3, 2, 4096, 30, 1), Error);
    CHECK_THROWS_AS(kmeans_1d(x.data(), nullptr, 3, 0, 4096, 30, 1), Error);
  }
}

TEST_CASE("kmeans_1d distortion on normal data is near the Lloyd-Max optimum") {
  // Lloyd-Max MSE / variance of a unit Gaussian with 2^b levels.
  const std::pair<int, double> optimum[] = {{2, 0.3634}, {4, 0.1175}, {8, 0.03454}, {16, 0.009497}};
  const int64_t n = 50000;
  auto x = test::random_floats(n, 11);
  double mean = 0, var = 0;
  for (float v : x) mean += v;
  mean /= double(n);
  for (float v : x) var += (v - mean) * (v - mean);
  var /= double(n);
  for (auto [k, opt] : optimum) {
    for (int64_t exact_max : {n, int64_t(0)}) {
      auto c = kmeans_1d(x.data(), nullptr, n, k, exact_max, 30, 1);
      const double ratio = sse(x, nullptr, c) / double(n) / var;
      MESSAGE("k=" << k << std::string(exact_max ? " exact" : " hist") << ": MSE/var " << ratio
                   << " (Lloyd-Max " << opt << ")");
      CHECK(ratio == doctest::Approx(opt).epsilon(0.03));
    }
  }
}

TEST_CASE("large-n method is within 0.5% of the exact DP") {
  struct Data {
    const char* name;
    std::vector<float> x;
  };
  const int64_t n = 20000;
  std::vector<Data> sets = {{"normal", test::random_floats(n, 21)},
                            {"uniform", uniform_floats(n, 22, -1.0f, 1.0f)}};
  auto heavy = test::random_floats(n, 23);
  for (int64_t i = 0; i < n; i += 997) heavy[i] *= 40.0f;  // rare large outliers
  sets.push_back({"outliers", heavy});
  auto w = uniform_floats(n, 24, 0.0f, 3.0f);
  for (const auto& d : sets) {
    for (int k : {2, 4, 8, 16}) {
      for (int weighted = 0; weighted < 2; ++weighted) {
        const float* wp = weighted ? w.data() : nullptr;
        const std::vector<float>* wv = weighted ? &w : nullptr;
        const double exact = sse(d.x, wv, kmeans_1d(d.x.data(), wp, n, k, n, 30, 1));
        const double hist = sse(d.x, wv, kmeans_1d(d.x.data(), wp, n, k, 0, 30, 1));
        const double pp = sse(d.x, wv, kmeans_1d_lloyd(d.x.data(), wp, n, k, 30, 1));
        MESSAGE(std::string(d.name) << " k=" << k << std::string(weighted ? " weighted" : "")
                                    << ": hist/exact - 1 = " << hist / exact - 1
                                    << ", kmeans++ Lloyd/exact - 1 = " << pp / exact - 1);
        CHECK(hist <= exact * 1.001);       // the brief asks 0.5%; measured below 1.1e-4
        CHECK(hist >= exact * (1 - 1e-9));  // the exact DP is optimal
        CHECK(pp >= exact * (1 - 1e-9));
      }
    }
  }
}

TEST_CASE("kmeans_1d_lloyd is deterministic for a seed and sorted") {
  auto x = test::random_floats(30000, 31);
  auto a = kmeans_1d_lloyd(x.data(), nullptr, 30000, 16, 30, 123);
  auto b = kmeans_1d_lloyd(x.data(), nullptr, 30000, 16, 30, 123);
  CHECK(a == b);
  check_sorted(a);
  CHECK(std::set<float>(a.begin(), a.end()).size() == 16);
  // And the large-n path of kmeans_1d is deterministic too.
  CHECK(kmeans_1d(x.data(), nullptr, 30000, 16, 0, 30, 1) ==
        kmeans_1d(x.data(), nullptr, 30000, 16, 0, 30, 2));
}
