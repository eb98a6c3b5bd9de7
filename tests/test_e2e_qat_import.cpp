// Lossless import of k-means QAT exports (issue #6). scripts/export_qat.py writes, from the
// shared 51M model, a 1-Bit Wonder layout export (weight_packed MSB-first, bf16 scales per
// 64 weights, f32 centroids) and a ParetoQ-style fake-quantized bf16 checkpoint, each with
// only the first layer quantized (fast). The test checks that
//   - every imported weight, read back from the .kmq file through the CPU kernels, equals
//     centroids[idx] * scale computed here from the export's raw bytes (bit for bit);
//   - the imported model's logits equal those of an f32 model holding exactly those
//     reconstructed weights (the same function; only kernel rounding may differ);
//   - ParetoQ-style rows are stored with per-row codebooks that reproduce every bf16 weight.
#include <cstdlib>
#include <string_view>
#include <fmt/format.h>

#include "convert/convert.h"
#include "convert/safetensors.h"
#include "kernels/cpu/kernels.h"
#include "kmq/kmq_file.h"
#include "kmq/model.h"
#include "test_util.h"
#include "util/half.h"

using namespace kmq;
namespace fs = std::filesystem;

namespace {

const char* kModel = "models/kmq-novels-51m";

bool export_qat(const fs::path& out, const std::string& args) {
  const std::string cmd = fmt::format("python3 '{}/scripts/export_qat.py' '{}' '{}' {} 2>/dev/null", KMQ_SOURCE_DIR,
                                      (test::shared_dir() / kModel).string(), out.string(), args);
  return std::system(cmd.c_str()) == 0;
}

std::vector<float> dequant(const TensorRef& t) {
  cpu::WeightView v;
  v.dtype = t.dtype;
  v.rows = t.rows;
  v.cols = t.cols;
  v.data = t.data;
  v.bits = t.bits;
  v.scope = t.scope;
  v.group_size = t.group_size;
  v.scale_block = t.scale_block;
  v.codebook_dtype = t.codebook_dtype;
  v.scale_dtype = t.scale_dtype;
  v.codebooks = t.codebooks;
  v.scales = t.scales;
  std::vector<float> out(size_t(t.rows * t.cols));
  for (int64_t r = 0; r < t.rows; ++r) cpu::kernels().dequant_row(v, r, out.data() + r * t.cols);
  return out;
}

const char* kLinears[][2] = {{"self_attn.q_proj", "attn_q"}, {"self_attn.k_proj", "attn_k"},
                             {"self_attn.v_proj", "attn_v"}, {"self_attn.o_proj", "attn_output"},
                             {"mlp.gate_proj", "ffn_gate"},  {"mlp.up_proj", "ffn_up"},
                             {"mlp.down_proj", "ffn_down"}};

}  // namespace

TEST_CASE("1-Bit Wonder export imports losslessly and computes what it describes") {
  if (!test::have_shared(kModel)) return;
  // The scalar kernels compute the float function; the AVX2 ones quantize their per-token
  // lookup tables to int8 (kernels/cpu/lut.h), about 2e-3 of the logits' range. Set before
  // the kernel table is first chosen (this test case runs first in this file).
  ::setenv("KMQ_ISA", "scalar", 0);
  const int bits = 2;
  const fs::path dir = test::temp_path("qat-1bw");
  REQUIRE_MESSAGE(export_qat(dir, fmt::format("--bits {} --layers 1", bits)), "scripts/export_qat.py failed");

  // Independent reconstruction from the raw export.
  SafetensorsFile st(dir / "model.safetensors");
  // Every other tensor f32 (imported tensors are always written as stored).
  ConvertOptions o;
  o.threads = 2;
  o.overrides = {{".*", "f32"}};
  const fs::path kq = test::temp_path("qat-1bw.kmq");
  SourceModel src = open_hf_dir(dir);
  convert_model(src, kq, o);
  KmqFile f(kq);
  for (const auto& [hf, kmq] : kLinears) {
    const std::string base = fmt::format("model.layers.0.{}", hf);
    const auto* pi = st.find(base + ".weight_packed");
    const auto* si = st.find(base + ".scales");
    const auto* ci = st.find(base + ".centroids");
    REQUIRE(pi);
    REQUIRE(si);
    REQUIRE(ci);
    const auto packed = st.bytes(*pi);
    const std::vector<float> sc = st.load_f32(*si), cb = st.load_f32(*ci);
    const TensorRef& t = f.get(fmt::format("blk.0.{}", kmq));
    CHECK(t.dtype == DType::kKmq);
    CHECK(t.bits == bits);
    CHECK(t.scale_block == 64);
    CHECK(t.scale_dtype == DType::kBF16);
    const int64_t rows = t.rows, cols = t.cols, row_bytes = cols * bits / 8;
    const std::vector<float> got = dequant(t);
    int64_t bad = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j) {
        unsigned idx = 0;
        for (int64_t b = j * bits; b < (j + 1) * bits; ++b)
          idx = (idx << 1) | ((packed[size_t(r * row_bytes + b / 8)] >> (7 - b % 8)) & 1u);
        const float want = cb[idx] * sc[size_t(r * (cols / 64) + j / 64)];
        if (got[size_t(r * cols + j)] != want) ++bad;
      }
    CHECK_MESSAGE(bad == 0, fmt::format("{}: {} weights differ from centroids[idx]*scale", kmq, bad));
  }
  // The same function as f32: the reconstructed weights stored as float.
  SourceModel fsrc = open_hf_dir(dir);
  for (auto& t : fsrc.tensors) t.load_quantized = nullptr;  // load() gives the reconstruction
  ConvertOptions of;
  of.float_only = true;
  of.float_dtype = DType::kF32;
  const fs::path kf = test::temp_path("qat-1bw-f32.kmq");
  convert_model(fsrc, kf, of);
  {
    KmqFile ff(kf);
    const auto a = dequant(f.get("blk.0.attn_q")), b = dequant(ff.get("blk.0.attn_q"));
    CHECK(a == b);
  }
  auto m1 = Model::load(kq, ModelOptions{"cpu", 2});
  auto m2 = Model::load(kf, ModelOptions{"cpu", 2});
  CHECK(m1->file().get("blk.0.attn_q").dtype == DType::kKmq);
  CHECK(m1->file().get("blk.1.attn_q").dtype == DType::kF32);
  const std::vector<int32_t> prompt = m1->tokenizer().encode("It was a dark and stormy night; the rain fell");
  std::vector<float> l1, l2;
  m1->new_session(64)->eval(prompt, &l1, 1);
  m2->new_session(64)->eval(prompt, &l2, 1);
  REQUIRE(l1.size() == l2.size());
  double max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < l1.size(); ++i) {
    max_diff = std::max(max_diff, double(std::fabs(l1[i] - l2[i])));
    max_abs = std::max(max_abs, double(std::fabs(l2[i])));
  }
  const bool exact_kernels = std::string_view(cpu::kernels().isa) == "scalar";
  const double tol = (exact_kernels ? 1e-3 : 5e-3) * std::max(1.0, max_abs);
  CHECK_MESSAGE(max_diff <= tol, fmt::format("max logit difference {} ({} kernels)", max_diff, cpu::kernels().isa));
  fs::remove_all(dir);
}

TEST_CASE("ParetoQ-style fake-quantized checkpoint imports losslessly") {
  if (!test::have_shared(kModel)) return;
  const fs::path dir = test::temp_path("qat-paretoq");
  REQUIRE_MESSAGE(export_qat(dir, "--bits 2 --layers 1 --layout paretoq"), "scripts/export_qat.py failed");
  SafetensorsFile st(dir / "model.safetensors");
  ConvertOptions o;  // layers 0 and 1 at 4 bits: layer 0's 2-bit rows are detected and stored exactly
  o.threads = 2;
  o.overrides = {{".*", "bf16"}, {"blk\\.[01]\\..*", "4"}};
  const fs::path kq = test::temp_path("qat-paretoq.kmq");
  SourceModel src = open_hf_dir(dir);
  convert_model(src, kq, o);
  KmqFile f(kq);
  for (const auto& [hf, kmq] : kLinears) {
    const auto* wi = st.find(fmt::format("model.layers.0.{}.weight", hf));
    REQUIRE(wi);
    const std::vector<float> want = st.load_f32(*wi);
    const TensorRef& t = f.get(fmt::format("blk.0.{}", kmq));
    CHECK(t.dtype == DType::kKmq);
    CHECK(t.bits == 2);
    CHECK(t.scope == CodebookScope::kRow);
    CHECK(t.scale_block == 0);
    CHECK(dequant(t) == want);
    // layer 1 is an ordinary float layer: k-means at 4 bits, not exact
    CHECK(f.get(fmt::format("blk.1.{}", kmq)).bits == 4);
    CHECK(f.get(fmt::format("blk.1.{}", kmq)).scope == CodebookScope::kTensor);
  }
  fs::remove_all(dir);
}
