// The sampler (include/kmq/sampling.h): edge cases of every step of the chain, and the
// distributions of sampled tokens against the expected softmax (chi-square tests with
// fixed seeds; the critical values are for p = 0.001, so a correct sampler passes with
// any seed 999 times in 1000 and these seeds were not chosen to pass).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "kmq/sampling.h"
#include "test_util.h"

using namespace kmq;

namespace {

SamplerOptions plain(float temp = 1.0f) {
  SamplerOptions o;
  o.temperature = temp;
  o.top_k = 0;
  o.top_p = 1.0f;
  o.min_p = 0.0f;
  return o;
}

std::vector<double> softmax(const std::vector<float>& l, double temp = 1.0) {
  double mx = *std::max_element(l.begin(), l.end()), s = 0;
  std::vector<double> p(l.size());
  for (size_t i = 0; i < l.size(); ++i) s += p[i] = std::exp((l[i] - mx) / temp);
  for (auto& v : p) v /= s;
  return p;
}

// Pearson's chi-square of `draws` samples against the probabilities `expect` (ids with
// probability 0 must never be drawn).
double chi_square(const std::vector<float>& logits, const SamplerOptions& o, const std::vector<double>& expect,
                  int draws, uint64_t seed) {
  Rng rng(seed);
  std::vector<int> count(logits.size());
  for (int i = 0; i < draws; ++i) {
    const int32_t id = sample(logits.data(), int64_t(logits.size()), o, rng);
    REQUIRE(id >= 0);
    REQUIRE(size_t(id) < logits.size());
    REQUIRE(expect[size_t(id)] > 0);
    ++count[size_t(id)];
  }
  double chi = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (expect[i] == 0) continue;
    const double e = expect[i] * draws;
    chi += (count[i] - e) * (count[i] - e) / e;
  }
  return chi;
}

// chi-square critical values at p = 0.001 by degrees of freedom
double critical(int df) {
  static const double v[] = {0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59};
  return v[df];
}

}  // namespace

TEST_CASE("greedy: argmax, lowest id on ties, no RNG draw") {
  const std::vector<float> l = {0.5f, 2.0f, -1.0f, 2.0f};
  Rng rng(1), untouched(1);
  CHECK(sample(l.data(), 4, plain(0.0f), rng) == 1);
  CHECK(rng.next() == untouched.next());
  const std::vector<float> nan_first = {NAN, 1.0f, 3.0f};
  CHECK(argmax(nan_first.data(), 3) == 2);
}

TEST_CASE("top-k 1 is greedy whatever the temperature and seed") {
  for (uint64_t seed = 0; seed < 50; ++seed) {
    const auto l = test::random_floats(1000, seed, 3.0f);
    SamplerOptions o = plain(1.5f);
    o.top_k = 1;
    Rng rng(seed);
    CHECK(sample(l.data(), 1000, o, rng) == argmax(l.data(), 1000));
  }
}

TEST_CASE("the sampler is a pure function of logits, options and RNG state") {
  const auto l = test::random_floats(5000, 3, 2.0f);
  const auto copy = l;
  SamplerOptions o;  // the defaults: top-k 40, top-p 0.95, min-p 0.05
  Rng a(42), b(42);
  std::vector<int32_t> sa, sb;
  for (int i = 0; i < 200; ++i) sa.push_back(sample(l.data(), 5000, o, a));
  for (int i = 0; i < 200; ++i) sb.push_back(sample(l.data(), 5000, o, b));
  CHECK(sa == sb);
  CHECK(l == copy);
  Rng c(43);
  std::vector<int32_t> sc;
  for (int i = 0; i < 200; ++i) sc.push_back(sample(l.data(), 5000, o, c));
  CHECK(sc != sa);
}

TEST_CASE("sampled frequencies follow softmax(logits / temperature)") {
  const std::vector<float> l = {1.0f, 0.5f, 0.0f, -0.5f, 2.0f, 1.5f, -1.0f, 0.25f};
  for (double temp : {1.0, 0.5, 2.0}) {
    CAPTURE(temp);
    const double chi = chi_square(l, plain(float(temp)), softmax(l, temp), 40000, 7);
    CHECK(chi < critical(7));
  }
  // A wrong temperature is detected: the test can fail.
  CHECK(chi_square(l, plain(1.3f), softmax(l, 1.0), 40000, 7) > critical(7));
}

TEST_CASE("top-k keeps the k largest and renormalizes") {
  const std::vector<float> l = {1.0f, 0.5f, 0.0f, -0.5f, 2.0f, 1.5f, -1.0f, 0.25f};
  SamplerOptions o = plain(1.0f);
  o.top_k = 3;  // ids 4, 5, 0
  auto p = softmax(l);
  std::vector<double> expect(l.size(), 0.0);
  const double s = p[4] + p[5] + p[0];
  for (int id : {4, 5, 0}) expect[size_t(id)] = p[size_t(id)] / s;
  CHECK(chi_square(l, o, expect, 30000, 11) < critical(2));
  const auto d = sampling_distribution(l.data(), 8, o);
  REQUIRE(d.size() == 3);
  CHECK(d[0].first == 4);
  CHECK(d[1].first == 5);
  CHECK(d[2].first == 0);
}

TEST_CASE("top-p keeps the smallest prefix with enough mass") {
  // probabilities 0.5, 0.3, 0.15, 0.05
  const std::vector<float> l = {float(std::log(0.5)), float(std::log(0.3)), float(std::log(0.15)), float(std::log(0.05))};
  SamplerOptions o = plain(1.0f);
  o.top_p = 0.75f;
  auto d = sampling_distribution(l.data(), 4, o);
  REQUIRE(d.size() == 2);
  CHECK(d[0].second == doctest::Approx(0.5 / 0.8));
  o.top_p = 0.85f;
  CHECK(sampling_distribution(l.data(), 4, o).size() == 3);
  o.top_p = 0.01f;  // at least one candidate always remains
  CHECK(sampling_distribution(l.data(), 4, o).size() == 1);
  o.top_p = 1.0f;
  CHECK(sampling_distribution(l.data(), 4, o).size() == 4);
  o.top_p = 0.75f;
  std::vector<double> expect = {0.5 / 0.8, 0.3 / 0.8, 0, 0};
  CHECK(chi_square(l, o, expect, 20000, 5) < critical(1));
}

TEST_CASE("min-p cuts candidates below min_p times the top probability") {
  const std::vector<float> l = {float(std::log(0.5)), float(std::log(0.3)), float(std::log(0.15)), float(std::log(0.05))};
  SamplerOptions o = plain(1.0f);
  o.min_p = 0.2f;  // threshold 0.1: 0.05 goes
  auto d = sampling_distribution(l.data(), 4, o);
  REQUIRE(d.size() == 3);
  CHECK(d[2].first == 2);
  o.min_p = 0.31f;  // threshold 0.155: 0.15 goes too
  CHECK(sampling_distribution(l.data(), 4, o).size() == 2);
  o.min_p = 1.0f;  // only the top one
  CHECK(sampling_distribution(l.data(), 4, o).size() == 1);
  // min-p applies after temperature: at temperature 2 the probabilities are flatter
  o.min_p = 0.2f;
  o.temperature = 2.0f;
  CHECK(sampling_distribution(l.data(), 4, o).size() == 4);
}

TEST_CASE("-inf logits are never drawn; all -inf gives the lowest id") {
  const std::vector<float> l = {-INFINITY, 0.0f, -INFINITY, 0.0f};
  Rng rng(9);
  for (int i = 0; i < 1000; ++i) {
    const int32_t id = sample(l.data(), 4, plain(1.0f), rng);
    CHECK((id == 1 || id == 3));
  }
  const std::vector<float> none = {-INFINITY, -INFINITY};
  CHECK(sample(none.data(), 2, plain(1.0f), rng) == 0);
}

TEST_CASE("repetition penalty divides positive and multiplies negative logits, in the window only") {
  const std::vector<float> l = {2.0f, -2.0f, 1.0f, 3.0f};
  SamplerOptions o = plain(0.0f);
  o.repeat_penalty = 2.0f;
  o.penalty_last_n = 2;
  const std::vector<int32_t> hist = {2, 0, 1, 0};  // window {1, 0}: token 2 is outside
  auto p = apply_penalties(l.data(), 4, o, hist);
  CHECK(p[0] == 1.0f);
  CHECK(p[1] == -4.0f);
  CHECK(p[2] == 1.0f);
  CHECK(p[3] == 3.0f);
  o.penalty_last_n = -1;  // all history: token 2 too
  CHECK(apply_penalties(l.data(), 4, o, hist)[2] == 0.5f);
  o.penalty_last_n = 0;  // off
  CHECK(apply_penalties(l.data(), 4, o, hist) == l);
}

TEST_CASE("frequency and presence penalties count occurrences") {
  const std::vector<float> l = {1.0f, 1.0f, 1.0f};
  SamplerOptions o = plain(0.0f);
  o.frequency_penalty = 0.25f;
  o.presence_penalty = 0.5f;
  const std::vector<int32_t> hist = {0, 0, 0, 1};
  auto p = apply_penalties(l.data(), 3, o, hist);
  CHECK(p[0] == doctest::Approx(1.0 - 3 * 0.25 - 0.5));
  CHECK(p[1] == doctest::Approx(1.0 - 0.25 - 0.5));
  CHECK(p[2] == 1.0f);
}

TEST_CASE("penalties change the greedy choice and the sampled distribution") {
  const std::vector<float> l = {3.0f, 2.9f, 0.0f};
  SamplerOptions o = plain(0.0f);
  Rng rng(1);
  const std::vector<int32_t> hist = {0, 0};
  CHECK(sample(l.data(), 3, o, rng, hist) == 0);  // penalties off by default
  o.repeat_penalty = 1.1f;
  CHECK(sample(l.data(), 3, o, rng, hist) == 1);
  // sampled: frequency penalty 1 on token 0 seen twice gives logits {1, 2.9, 0}
  SamplerOptions s = plain(1.0f);
  s.frequency_penalty = 1.0f;
  const auto expect = softmax({1.0f, 2.9f, 0.0f});
  Rng r2(3);
  std::vector<int> count(3);
  const int n = 20000;
  for (int i = 0; i < n; ++i) ++count[size_t(sample(l.data(), 3, s, r2, hist))];
  double chi = 0;
  for (int i = 0; i < 3; ++i) chi += (count[size_t(i)] - expect[size_t(i)] * n) * (count[size_t(i)] - expect[size_t(i)] * n) / (expect[size_t(i)] * n);
  CHECK(chi < critical(2));
}

TEST_CASE("the chain order: top-k before top-p before min-p") {
  // probabilities 0.4 0.3 0.2 0.1; top-k 3 renormalizes to 4/9 3/9 2/9 before top-p 0.7
  const std::vector<float> l = {float(std::log(0.4)), float(std::log(0.3)), float(std::log(0.2)), float(std::log(0.1))};
  SamplerOptions o = plain(1.0f);
  o.top_k = 3;
  o.top_p = 0.7f;  // 4/9 + 3/9 = 0.78 >= 0.7: two remain (without top-k: 0.4 + 0.3 = 0.7, also two)
  CHECK(sampling_distribution(l.data(), 4, o).size() == 2);
  o.top_p = 0.75f;  // with top-k first: 0.78 >= 0.75, two remain; top-p first would keep three
  CHECK(sampling_distribution(l.data(), 4, o).size() == 2);
  o.min_p = 0.8f;  // then min-p: 3/9 < 0.8 * 4/9, one remains
  CHECK(sampling_distribution(l.data(), 4, o).size() == 1);
}

TEST_CASE("invalid options are refused with the option's name") {
  auto bad = [](auto set, const char* name) {
    SamplerOptions o;
    set(o);
    test::check_error([&] { validate(o); }, {name});
  };
  bad([](SamplerOptions& o) { o.temperature = -1; }, "--temp");
  bad([](SamplerOptions& o) { o.top_k = -2; }, "--top-k");
  bad([](SamplerOptions& o) { o.top_p = 0; }, "--top-p");
  bad([](SamplerOptions& o) { o.top_p = 1.5f; }, "--top-p");
  bad([](SamplerOptions& o) { o.min_p = -0.1f; }, "--min-p");
  bad([](SamplerOptions& o) { o.repeat_penalty = 0; }, "--repeat-penalty");
  bad([](SamplerOptions& o) { o.penalty_last_n = -3; }, "--repeat-last-n");
  CHECK(test::error_of([] { validate(SamplerOptions{}); }).empty());
}
