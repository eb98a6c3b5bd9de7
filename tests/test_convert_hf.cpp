// Hugging Face directory reader: config.json variants (Llama, Mistral, Qwen2, RoPE forms),
// name/shape mapping on small synthetic folders, bad inputs, and the two real checkpoints.
#include <doctest/doctest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "convert/hf_config.h"
#include "convert/source.h"
#include "kmq/error.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using kmq::test::check_error;
using kmq::test::error_of;

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(s.data(), std::streamsize(s.size()));
}

// A small Llama config; tests override fields.
json tiny_config() {
  return json{{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"vocab_size", 512},
              {"hidden_size", 16},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"num_key_value_heads", 2},
              {"intermediate_size", 24},
              {"max_position_embeddings", 128},
              {"rms_norm_eps", 1e-5},
              {"rope_theta", 10000.0},
              {"hidden_act", "silu"},
              {"tie_word_embeddings", false},
              {"bos_token_id", 1},
              {"eos_token_id", 2}};
}

kmq::HfConfig parse(const json& j) { return kmq::parse_hf_config(j.dump(), "config.json"); }

// The HF tensors of a config (names and shapes), as a checkpoint would hold them.
std::vector<std::pair<std::string, std::vector<int64_t>>> hf_tensors(const json& c, bool qkv_bias, bool lm_head) {
  const int64_t d = c["hidden_size"], v = c["vocab_size"], f = c["intermediate_size"], h = c["num_attention_heads"],
                kvh = c["num_key_value_heads"], hd = d / h;
  std::vector<std::pair<std::string, std::vector<int64_t>>> t = {{"model.embed_tokens.weight", {v, d}},
                                                                  {"model.norm.weight", {d}}};
  if (lm_head) t.push_back({"lm_head.weight", {v, d}});
  for (int64_t i = 0; i < int64_t(c["num_hidden_layers"]); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    t.push_back({p + "input_layernorm.weight", {d}});
    t.push_back({p + "post_attention_layernorm.weight", {d}});
    t.push_back({p + "self_attn.q_proj.weight", {h * hd, d}});
    t.push_back({p + "self_attn.k_proj.weight", {kvh * hd, d}});
    t.push_back({p + "self_attn.v_proj.weight", {kvh * hd, d}});
    t.push_back({p + "self_attn.o_proj.weight", {d, h * hd}});
    t.push_back({p + "mlp.gate_proj.weight", {f, d}});
    t.push_back({p + "mlp.up_proj.weight", {f, d}});
    t.push_back({p + "mlp.down_proj.weight", {d, f}});
    if (qkv_bias) {
      t.push_back({p + "self_attn.q_proj.bias", {h * hd}});
      t.push_back({p + "self_attn.k_proj.bias", {kvh * hd}});
      t.push_back({p + "self_attn.v_proj.bias", {kvh * hd}});
    }
  }
  return t;
}

// Writes an f32 safetensors file; tensor k holds the values k*1000 + i.
void write_safetensors(const fs::path& p, const std::vector<std::pair<std::string, std::vector<int64_t>>>& ts) {
  json h = json::object();
  std::string data;
  for (size_t k = 0; k < ts.size(); ++k) {
    size_t n = 1;
    for (int64_t d : ts[k].second) n *= size_t(d);
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = float(k * 1000 + i);
    h[ts[k].first] = {{"dtype", "F32"}, {"shape", ts[k].second}, {"data_offsets", {data.size(), data.size() + n * 4}}};
    data.append(reinterpret_cast<const char*>(v.data()), n * 4);
  }
  std::string hs = h.dump();
  uint64_t len = hs.size();
  std::string out(reinterpret_cast<const char*>(&len), 8);
  write_text(p, out + hs + data);
}

// A synthetic HF folder; a tokenizer from the shared stories260K-hf (512 pieces) if present.
fs::path make_dir(const std::string& name, const json& cfg,
                  const std::vector<std::pair<std::string, std::vector<int64_t>>>& ts) {
  auto dir = kmq::test::temp_path(name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  write_text(dir / "config.json", cfg.dump(2));
  write_safetensors(dir / "model.safetensors", ts);
  auto tok = kmq::test::shared_dir() / "models/stories260K-hf";
  if (fs::exists(tok / "tokenizer.model")) {
    fs::copy_file(tok / "tokenizer.model", dir / "tokenizer.model");
    fs::copy_file(tok / "tokenizer_config.json", dir / "tokenizer_config.json");
  }
  return dir;
}

}  // namespace

TEST_CASE("hf config: Llama fields and defaults") {
  auto c = parse(tiny_config()).model;
  CHECK(c.arch == "llama");
  CHECK(c.n_vocab == 512);
  CHECK(c.dim == 16);
  CHECK(c.n_layers == 2);
  CHECK(c.n_heads == 4);
  CHECK(c.n_kv_heads == 2);
  CHECK(c.head_dim == 4);
  CHECK(c.ffn_dim == 24);
  CHECK(c.max_seq == 128);
  CHECK(c.norm_eps == 1e-5f);
  CHECK(c.rope_theta == 10000.0f);
  CHECK(c.rope_scaling.type == "none");
  CHECK(c.sliding_window == 0);
  CHECK(!c.tied_embeddings);
  CHECK(!c.attn_qkv_bias);
  CHECK(c.bos_id == 1);
  CHECK(c.eos_id == 2);

  json j = tiny_config();
  j.erase("num_key_value_heads");
  j.erase("rms_norm_eps");
  j.erase("rope_theta");
  j.erase("hidden_act");
  j["head_dim"] = 8;  // explicit head_dim need not be hidden/heads
  j["eos_token_id"] = {128, 2, 7};
  auto h = parse(j);
  CHECK(h.model.n_kv_heads == 4);
  CHECK(h.model.head_dim == 8);
  CHECK(h.model.norm_eps == 1e-6f);  // HF LlamaConfig default
  CHECK(h.model.rope_theta == 10000.0f);
  CHECK(h.model.eos_id == 128);
  CHECK(h.eos_ids == std::vector<int64_t>{128, 2, 7});

  j = tiny_config();
  j.erase("architectures");  // model_type alone is enough
  CHECK(parse(j).architecture == "llama");
  j["architectures"] = {"SmolLMForCausalLM"};  // a causal-LM class of a supported model_type
  CHECK(parse(j).model.dim == 16);
}

TEST_CASE("hf config: RoPE theta and scaling forms") {
  json j = tiny_config();
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_theta", 500000.0}, {"rope_type", "default"}};  // transformers 5
  auto c = parse(j).model;
  CHECK(c.rope_theta == 500000.0f);
  CHECK(c.rope_scaling.type == "none");

  j["rope_parameters"] = {{"rope_theta", 500000.0}, {"rope_type", "llama3"}, {"factor", 8.0},
                          {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                          {"original_max_position_embeddings", 8192}};
  c = parse(j).model;
  CHECK(c.rope_scaling.type == "llama3");
  CHECK(c.rope_scaling.factor == 8.0f);
  CHECK(c.rope_scaling.high_freq_factor == 4.0f);
  CHECK(c.rope_scaling.original_max_position == 8192);

  j = tiny_config();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  c = parse(j).model;
  CHECK(c.rope_scaling.type == "linear");
  CHECK(c.rope_scaling.factor == 4.0f);

  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 32.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  CHECK(parse(j).model.rope_scaling.factor == 32.0f);

  j["rope_scaling"] = nullptr;
  CHECK(parse(j).model.rope_scaling.type == "none");

  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  check_error([&] { parse(j); }, {"config.json", "unsupported RoPE scaling 'yarn'"});
  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  check_error([&] { parse(j); }, {"config.json", "'dynamic'"});
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  check_error([&] { parse(j); }, {"config.json", "low_freq_factor"});
}

TEST_CASE("hf config: Mistral sliding window and Qwen2 biases") {
  json j = tiny_config();
  j["architectures"] = {"MistralForCausalLM"};
  j["model_type"] = "mistral";
  j["sliding_window"] = 4096;
  CHECK(parse(j).model.sliding_window == 4096);
  j["sliding_window"] = nullptr;
  CHECK(parse(j).model.sliding_window == 0);

  j = tiny_config();
  j["architectures"] = {"Qwen2ForCausalLM"};
  j["model_type"] = "qwen2";
  j["use_sliding_window"] = false;
  j["sliding_window"] = 32768;
  j["max_window_layers"] = 28;
  auto c = parse(j).model;
  CHECK(c.attn_qkv_bias);
  CHECK(c.sliding_window == 0);
  j["use_sliding_window"] = true;
  j["max_window_layers"] = 0;  // every layer windowed
  CHECK(parse(j).model.sliding_window == 32768);
  j["max_window_layers"] = 1;  // some layers only
  check_error([&] { parse(j); }, {"config.json", "sliding-window"});

  j = tiny_config();
  j["attention_bias"] = true;  // Llama: q/k/v biases (o_proj is checked on the tensors)
  CHECK(parse(j).model.attn_qkv_bias);
}

TEST_CASE("hf config: unsupported or malformed configs") {
  json j = tiny_config();
  j["architectures"] = {"GPT2LMHeadModel"};
  j["model_type"] = "gpt2";
  check_error([&] { parse(j); }, {"config.json", "unsupported architecture 'GPT2LMHeadModel'", "LlamaForCausalLM"});
  j["architectures"] = {"LlamaForSequenceClassification"};
  j["model_type"] = "llama";
  check_error([&] { parse(j); }, {"unsupported architecture 'LlamaForSequenceClassification'"});
  j.erase("architectures");
  j["model_type"] = "phi3";
  check_error([&] { parse(j); }, {"unsupported architecture 'phi3'"});

  j = tiny_config();
  j["hidden_act"] = "gelu";
  check_error([&] { parse(j); }, {"config.json", "hidden_act 'gelu'"});
  j = tiny_config();
  j["mlp_bias"] = true;
  check_error([&] { parse(j); }, {"config.json", "mlp_bias"});
  j = tiny_config();
  j["quantization_config"] = {{"quant_method", "gptq"}};
  check_error([&] { parse(j); }, {"config.json", "quantization_config"});
  j = tiny_config();
  j.erase("hidden_size");
  check_error([&] { parse(j); }, {"config.json", "missing required field \"hidden_size\""});
  j = tiny_config();
  j["num_hidden_layers"] = "two";
  check_error([&] { parse(j); }, {"config.json", "num_hidden_layers", "integer"});
  j = tiny_config();
  j["num_key_value_heads"] = 3;  // 4 heads not a multiple of 3
  check_error([&] { parse(j); }, {"config.json", "n_kv_heads"});
  j = tiny_config();
  j["eos_token_id"] = 600;
  check_error([&] { parse(j); }, {"config.json", "600"});
  check_error([] { kmq::parse_hf_config("{\"vocab_size\": ", "config.json"); }, {"config.json", "not valid JSON"});
}

TEST_CASE("hf dir: missing folder, config.json or weights") {
  auto base = kmq::test::temp_path("hf-missing");
  fs::remove_all(base);
  check_error([&] { kmq::open_hf_dir(base / "nope"); }, {"nope", "not a directory"});
  fs::create_directories(base);
  check_error([&] { kmq::open_hf_dir(base); }, {"config.json", "missing config.json"});
  write_text(base / "config.json", tiny_config().dump());
  check_error([&] { kmq::open_hf_dir(base); }, {"hf-missing", "no model.safetensors"});
  json j = tiny_config();
  j["architectures"] = {"MixtralForCausalLM"};
  j["model_type"] = "mixtral";
  write_text(base / "config.json", j.dump());
  check_error([&] { kmq::open_hf_dir(base); }, {"config.json", "unsupported architecture 'MixtralForCausalLM'"});
}

TEST_CASE("hf dir: tensors that disagree with config.json") {
  const json cfg = tiny_config();
  auto ts = hf_tensors(cfg, false, true);

  SUBCASE("shape mismatch names tensor, actual and expected shape") {
    for (auto& t : ts)
      if (t.first == "model.layers.1.self_attn.k_proj.weight") t.second = {16, 16};
    auto dir = make_dir("hf-shape", cfg, ts);
    check_error([&] { kmq::open_hf_dir(dir); },
                {"model.safetensors", "model.layers.1.self_attn.k_proj.weight", "[16, 16]", "[8, 16]", "shape"});
  }
  SUBCASE("missing tensor") {
    std::erase_if(ts, [](auto& t) { return t.first == "model.layers.0.mlp.up_proj.weight"; });
    auto dir = make_dir("hf-missing-tensor", cfg, ts);
    check_error([&] { kmq::open_hf_dir(dir); }, {"model.safetensors", "missing tensor", "mlp.up_proj"});
  }
  SUBCASE("layer beyond num_hidden_layers") {
    ts.push_back({"model.layers.2.input_layernorm.weight", {16}});
    auto dir = make_dir("hf-extra", cfg, ts);
    check_error([&] { kmq::open_hf_dir(dir); }, {"model.safetensors", "unexpected", "model.layers.2.input_layernorm"});
  }
  SUBCASE("o_proj bias") {
    json c = cfg;
    c["attention_bias"] = true;
    ts = hf_tensors(c, true, true);
    ts.push_back({"model.layers.0.self_attn.o_proj.bias", {16}});
    auto dir = make_dir("hf-obias", c, ts);
    check_error([&] { kmq::open_hf_dir(dir); }, {"model.safetensors", "o_proj.bias", "not supported"});
  }
  SUBCASE("Qwen2 without its biases") {
    json c = cfg;
    c["architectures"] = {"Qwen2ForCausalLM"};
    auto dir = make_dir("hf-qwen-nobias", c, ts);
    check_error([&] { kmq::open_hf_dir(dir); }, {"model.safetensors", "q_proj.bias"});
  }
  SUBCASE("corrupt safetensors in the folder") {
    auto dir = make_dir("hf-corrupt", cfg, ts);
    fs::resize_file(dir / "model.safetensors", fs::file_size(dir / "model.safetensors") - 10);
    check_error([&] { kmq::open_hf_dir(dir); }, {"model.safetensors", "past the end"});
  }
}

TEST_CASE("hf dir: synthetic Qwen2 with biases, tied by absence of lm_head") {
  if (!kmq::test::have_shared("models/stories260K-hf/tokenizer.model")) return;
  json cfg = tiny_config();
  cfg["architectures"] = {"Qwen2ForCausalLM"};
  cfg["model_type"] = "qwen2";
  auto ts = hf_tensors(cfg, true, false);
  auto dir = make_dir("hf-qwen2", cfg, ts);
  auto m = kmq::open_hf_dir(dir);
  CHECK(m.config.attn_qkv_bias);
  CHECK(m.config.tied_embeddings);  // tie_word_embeddings false, but no lm_head.weight
  CHECK(m.config.name == "hf-qwen2");
  const std::vector<std::string> layer = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_q.bias", "attn_k.bias",
                                          "attn_v.bias", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"};
  std::vector<std::string> want = {"token_embd"};
  for (int l = 0; l < 2; ++l)
    for (const auto& k : layer) want.push_back("blk." + std::to_string(l) + "." + k);
  want.push_back("output_norm");
  std::vector<std::string> got;
  for (const auto& t : m.tensors) got.push_back(t.name);
  CHECK(got == want);
  // Values come from the named HF tensor: tensor k of the file holds k*1000 + i.
  for (const auto& t : m.tensors) {
    if (t.name != "blk.1.attn_k.bias") continue;
    size_t k = 0;
    while (ts[k].first != "model.layers.1.self_attn.k_proj.bias") ++k;
    auto v = t.load();
    REQUIRE(v.size() == 8);
    CHECK(t.shape == std::vector<int64_t>{8});
    CHECK(v[0] == float(k * 1000));
    CHECK(v[7] == float(k * 1000 + 7));
  }
}

TEST_CASE("hf dir: stories260K-hf (real, f32, tied, no lm_head)") {
  if (!kmq::test::have_shared("models/stories260K-hf/model.safetensors")) return;
  auto m = kmq::open_hf_dir(kmq::test::shared_dir() / "models/stories260K-hf");
  const auto& c = m.config;
  CHECK(c.n_vocab == 512);
  CHECK(c.dim == 64);
  CHECK(c.n_layers == 5);
  CHECK(c.n_heads == 8);
  CHECK(c.n_kv_heads == 4);
  CHECK(c.head_dim == 8);
  CHECK(c.ffn_dim == 172);
  CHECK(c.max_seq == 512);
  CHECK(c.norm_eps == 1e-5f);
  CHECK(c.rope_theta == 10000.0f);
  CHECK(c.tied_embeddings);
  CHECK(!c.attn_qkv_bias);
  CHECK(c.bos_id == 1);
  CHECK(c.eos_id == 2);
  CHECK(m.tokenizer.tokens.size() == 512);
  REQUIRE(m.tensors.size() == 47);
  CHECK(m.tensors.front().name == "token_embd");
  CHECK(m.tensors.back().name == "output_norm");
  CHECK(m.tensors[2].name == "blk.0.attn_q");
  CHECK(m.tensors[2].shape == std::vector<int64_t>{64, 64});
  CHECK(m.tensors[3].shape == std::vector<int64_t>{32, 64});
  CHECK(m.tensors[8].name == "blk.0.ffn_up");
  CHECK(m.tensors[8].shape == std::vector<int64_t>{172, 64});
  CHECK(m.tensors[9].shape == std::vector<int64_t>{64, 172});
  for (const auto& t : m.tensors) CHECK(t.src_dtype == kmq::DType::kF32);
  // Embedding row 0 is at byte 4864 of the file (README: header 4856 + 8).
  std::ifstream f(kmq::test::shared_dir() / "models/stories260K-hf/model.safetensors", std::ios::binary);
  f.seekg(4864);
  std::vector<float> raw(64);
  f.read(reinterpret_cast<char*>(raw.data()), 64 * 4);
  auto emb = m.tensors[0].load();
  REQUIRE(emb.size() == 512u * 64u);
  CHECK(std::memcmp(emb.data(), raw.data(), 64 * 4) == 0);
  CHECK(m.description.find("tied") != std::string::npos);
}

TEST_CASE("hf dir: kmq-novels-51m (real, 3 bf16 shards, rope_parameters, tied)") {
  if (!kmq::test::have_shared("models/kmq-novels-51m/config.json")) return;
  auto m = kmq::open_hf_dir(kmq::test::shared_dir() / "models/kmq-novels-51m");
  const auto& c = m.config;
  CHECK(c.n_vocab == 50257);
  CHECK(c.dim == 512);
  CHECK(c.n_layers == 8);
  CHECK(c.n_heads == 8);
  CHECK(c.n_kv_heads == 4);
  CHECK(c.head_dim == 64);
  CHECK(c.ffn_dim == 1536);
  CHECK(c.max_seq == 1024);
  CHECK(c.norm_eps == 1e-5f);
  CHECK(c.rope_theta == 10000.0f);
  CHECK(c.rope_scaling.type == "none");
  CHECK(c.tied_embeddings);
  CHECK(c.bos_id == 50256);
  CHECK(c.eos_id == 50256);
  CHECK(c.name == "kmq-novels-51m");
  CHECK(m.tokenizer.tokens.size() == 50257);
  REQUIRE(m.tensors.size() == 1 + 8 * 9 + 1);
  int64_t n_params = 0;
  for (const auto& t : m.tensors) {
    CHECK(t.src_dtype == kmq::DType::kBF16);
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    n_params += n;
  }
  CHECK(n_params == 50906112);
  CHECK(m.tensors[0].shape == std::vector<int64_t>{50257, 512});
  // Norm weights of a trained model: finite, not all ones, bf16-exact.
  auto norm = m.tensors.back().load();
  REQUIRE(norm.size() == 512);
  bool all_one = true;
  for (float x : norm) {
    CHECK(std::isfinite(x));
    all_one = all_one && x == 1.0f;
  }
  CHECK(!all_one);
  CHECK(m.description.find("3 safetensors shards") != std::string::npos);
  CHECK(m.description.find("bf16") != std::string::npos);
}

TEST_CASE("hf config: every field with a wrong type gives kmq::Error, never another exception") {
  const std::vector<json> odd = {json("text"), json::array({1, 2}), json(nullptr), json::object({{"a", 1}}),
                                 json(-7), json(0), json(2.5), json(true), json(1e300),
                                 json(uint64_t(18446744073709551615ull))};
  json base = tiny_config();
  base["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  base["sliding_window"] = 16;
  base["head_dim"] = 4;
  for (const auto& [key, v0] : base.items()) {
    for (const auto& v : odd) {
      json j = base;
      j[key] = v;
      CAPTURE(key);
      CAPTURE(v.dump());
      try {
        parse(j);
      } catch (const kmq::Error&) {
      }
    }
  }
  for (const auto& [key, v0] : base["rope_scaling"].items()) {
    for (const auto& v : odd) {
      json j = base;
      j["rope_scaling"][key] = v;
      try {
        parse(j);
      } catch (const kmq::Error&) {
      }
    }
  }
}
