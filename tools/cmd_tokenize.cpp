// kmq tokenize: a text's token ids with the model's own tokenizer, as `complete` and
// `perplexity` see them: printed one per line with the token's text, as a JSON array, or
// written as raw little-endian uint16/uint32 ids (for training scripts, e.g. scripts/qat).
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "commands.h"
#include "kmq/error.h"
#include "kmq/runtime.h"

namespace kmq::tools {

namespace {

// Writes ids to PATH (.u16 or .u32) through PATH.tmp-PID and a rename: never half a file.
void write_ids(const std::string& path, const std::vector<int32_t>& ids, int32_t n_vocab) {
  const bool u16 = path.ends_with(".u16");
  if (!u16 && !path.ends_with(".u32")) throw Error(path + ": the output file must end in .u16 or .u32");
  if (u16 && n_vocab > 65536)
    throw Error(fmt::format("{}: the vocabulary has {} tokens, too many for uint16 (use .u32)", path, n_vocab));
  const std::string tmp = fmt::format("{}.tmp-{}", path, ::getpid());
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw Error(fmt::format("{}: cannot create ({})", tmp, std::strerror(errno)));
  bool ok = true;
  for (int32_t id : ids) {
    const uint32_t v = uint32_t(id);
    const uint8_t b[4] = {uint8_t(v), uint8_t(v >> 8), uint8_t(v >> 16), uint8_t(v >> 24)};
    ok = ok && std::fwrite(b, 1, u16 ? 2 : 4, f) == (u16 ? 2u : 4u);
  }
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    throw Error(path + ": write failed");
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace

Runner add_tokenize(CLI::App& app) {
  struct Opts {
    std::string model, file, prompt, out;
    bool bos = false, ids = false, no_special = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("-m,--model", o->model, "The .kmq model whose tokenizer to use")->required();
  auto* f = app.add_option("-f,--file", o->file, "Text file to tokenize ('-' = stdin)");
  app.add_option("-p,--prompt", o->prompt, "Text to tokenize")->excludes(f);
  app.add_flag("--bos", o->bos, "Prepend BOS (and append EOS) as the tokenizer says (default: no, as perplexity does)");
  app.add_flag("--no-parse-special", o->no_special, "Treat special-token text such as <|endoftext|> as plain text");
  app.add_flag("--ids", o->ids, "Print only the ids, as a JSON array");
  app.add_option("-o,--output", o->out, "Write the ids as raw little-endian integers to FILE.u16 or FILE.u32");
  return [o]() -> int {
    if (o->file.empty() && o->prompt.empty()) throw Error("give a text with -p TEXT or -f FILE");
    const std::string text = o->file.empty() ? o->prompt : read_input_text(o->file);
    auto model = Model::load(o->model, ModelOptions{"cpu", 1});
    const Tokenizer& tok = model->tokenizer();
    const auto ids = tok.encode(text, o->bos, !o->no_special);
    if (!o->out.empty()) {
      write_ids(o->out, ids, tok.n_vocab());
      fmt::print(stderr, "kmq: {} tokens written to {}\n", ids.size(), o->out);
    } else if (o->ids) {
      fmt::print("{}\n", nlohmann::json(ids).dump());
    } else {
      for (int32_t id : ids) fmt::print("{:>7} {}\n", id, nlohmann::json(tok.decode_token(id)).dump(
                                                              -1, ' ', false, nlohmann::json::error_handler_t::replace));
    }
    return 0;
  };
}

}  // namespace kmq::tools
