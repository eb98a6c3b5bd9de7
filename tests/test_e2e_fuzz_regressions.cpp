// Replays the fuzz inputs kept in the repository through the fuzz targets' own code
// (tests/fuzz/fuzz_*.cpp compiled with KMQ_FUZZ_REPLAY): every file of
// tests/fuzz/regressions/<target>/ (inputs that once crashed; the bug is fixed) and of
// tests/fuzz/corpus/<target>/ (seeds). A crash fails the whole test binary, a failed
// property check fails the case naming the file. See docs/RELIABILITY.md.
#define KMQ_FUZZ_REPLAY 1
#include "fuzz/fuzz_batch_file.cpp"
#include "fuzz/fuzz_chat_template.cpp"
#include "fuzz/fuzz_encode_gpt2.cpp"
#include "fuzz/fuzz_encode_llama2.cpp"
#include "fuzz/fuzz_hf_config.cpp"
#include "fuzz/fuzz_kmq_file.cpp"
#include "fuzz/fuzz_safetensors.cpp"
#include "fuzz/fuzz_tok_hf_json.cpp"
#include "fuzz/fuzz_tok_spm_model.cpp"
#include "fuzz/fuzz_tok_tiktoken.cpp"
#include "fuzz/fuzz_tokenizer_json.cpp"

#include <algorithm>
#include <fstream>
#include <iterator>

#include "kmq/model.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using Target = int (*)(const uint8_t*, size_t);

struct Entry {
  const char* name;
  Target run;
  const char* needs_shared;  // a shared file the target loads, or nullptr
};

const Entry kTargets[] = {
    {"kmq_file", kmq_fuzz_kmq_file, nullptr},
    {"safetensors", kmq_fuzz_safetensors, nullptr},
    {"hf_config", kmq_fuzz_hf_config, nullptr},
    {"tok_hf_json", kmq_fuzz_tok_hf_json, nullptr},
    {"tok_spm_model", kmq_fuzz_tok_spm_model, nullptr},
    {"tok_tiktoken", kmq_fuzz_tok_tiktoken, nullptr},
    {"tokenizer_json", kmq_fuzz_tokenizer_json, nullptr},
    {"encode_gpt2", kmq_fuzz_encode_gpt2, "models/kmq-novels-51m/tokenizer.json"},
    {"encode_llama2", kmq_fuzz_encode_llama2, "tokenizers/llama2-spm/tokenizer.model"},
    {"batch_file", kmq_fuzz_batch_file, nullptr},
    {"chat_template", kmq_fuzz_chat_template, nullptr},
};

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Replays every file under tests/fuzz/<kind>/<target>/; returns how many ran.
int replay(const char* kind) {
  int n = 0;
  for (const auto& t : kTargets) {
    const fs::path dir = fs::path(KMQ_SOURCE_DIR) / "tests/fuzz" / kind / t.name;
    if (!fs::is_directory(dir)) continue;
    if (t.needs_shared && !kmq::test::have_shared(t.needs_shared)) continue;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      INFO(f.string());
      const std::string bytes = read_all(f);
      CHECK_NOTHROW(t.run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
      ++n;
    }
  }
  return n;
}

}  // namespace

TEST_CASE("fuzz regressions: every kept crash input is handled") {
  MESSAGE(replay("regressions") << " regression inputs replayed");
}

TEST_CASE("fuzz seeds: every seed input is handled") {
  MESSAGE(replay("corpus") << " seed inputs replayed");
}

// Limits against hostile files: a config whose default context needs more memory than the
// machine has is refused by new_session with the size it needs, before allocating.
TEST_CASE("limits: a session that does not fit in memory is refused with its size") {
  kmq::ModelConfig c;
  c.n_vocab = 16;
  c.dim = 8;
  c.n_layers = 1;
  c.n_heads = 1;
  c.n_kv_heads = 1;
  c.head_dim = 4096;             // kv_dim 4096
  c.ffn_dim = 8;
  c.tied_embeddings = true;
  c.max_seq = int64_t(1) << 24;  // the KV cache alone: 2 * 2^24 * 4096 * 4 bytes = 512 GiB
  c.bos_id = 1;
  c.eos_id = 2;
  kmq::TokenizerData t;
  t.kind = kmq::TokenizerKind::kBpe;
  for (int i = 0; i < 16; ++i) {
    t.tokens.push_back("t" + std::to_string(i));
    t.types.push_back(kmq::TokenType::kNormal);
  }
  t.pre_tokenizer = "gpt2";
  const auto path = kmq::test::temp_path("huge_ctx.kmq");
  fs::remove(path);
  {
    kmq::KmqWriter w(path, c, t);
    auto add = [&](const std::string& name, int64_t rows, int64_t cols) {
      const std::vector<float> v(size_t(rows * cols), 0.5f);
      w.add_float(name, kmq::DType::kF16, cols == 1 ? std::vector<int64_t>{rows} : std::vector<int64_t>{rows, cols},
                  v.data());
    };
    add("token_embd", 16, 8);
    add("blk.0.attn_norm", 8, 1);
    add("blk.0.attn_q", 4096, 8);
    add("blk.0.attn_k", 4096, 8);
    add("blk.0.attn_v", 4096, 8);
    add("blk.0.attn_output", 8, 4096);
    add("blk.0.ffn_norm", 8, 1);
    add("blk.0.ffn_gate", 8, 8);
    add("blk.0.ffn_up", 8, 8);
    add("blk.0.ffn_down", 8, 8);
    add("output_norm", 8, 1);
    w.finish();
  }
  auto model = kmq::Model::load(path, kmq::ModelOptions{"cpu", 1});
  CHECK_THROWS_WITH_AS(model->new_session(), doctest::Contains("GiB for the KV cache and activations"), kmq::Error);
  auto s = model->new_session(16);
  CHECK(s->n_ctx() == 16);
  fs::remove(path);
}
