// kmq: run k-means quantized language models. Subcommands: info, complete, perplexity, chat,
// bench, tokenize.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "commands.h"
#include "kmq/error.h"
#include "util/mmap_file.h"

namespace kmq::tools {

size_t complete_utf8_prefix(const std::string& s) {
  size_t i = s.size();
  // look back at most 3 bytes for a lead byte whose sequence is incomplete
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    const unsigned char c = static_cast<unsigned char>(s[s.size() - back]);
    if ((c & 0xc0) == 0x80) continue;  // continuation byte
    const size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
    if (need > back) i = s.size() - back;
    break;
  }
  return i;
}

std::string read_input_text(const std::string& path) {
  if (path == "-") {
    std::string s;
    char buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, stdin)) > 0) s.append(buf, n);
    return s;
  }
  if (!std::filesystem::exists(path)) throw Error(path + ": no such file");
  return read_text_file(path);
}

}  // namespace kmq::tools

int main(int argc, char** argv) {
  CLI::App app{"kmq: run k-means quantized language models (.kmq files).\n\n"
               "  kmq chat -m model.kmq -s \"You are a helpful assistant.\"\n"
               "  kmq complete -m model.kmq -p \"Once upon a time\" -n 64\n"
               "  kmq perplexity -m model.kmq -f wiki.test.raw\n"
               "  kmq info model.kmq --verify\n"
               "  kmq bench -m model.kmq -p 512 -n 128 -t 1,2\n"
               "  kmq tokenize -m model.kmq -p \"Hello world\"\n",
               "kmq"};
  app.set_version_flag("--version", "kmq 0.1.0 (.kmq format version 1)");
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Help for every subcommand");
  auto* info = app.add_subcommand("info", "Print a model's configuration, tensors and bits per weight");
  auto* complete = app.add_subcommand("complete", "Complete a prompt (streams text to stdout)");
  auto* ppl = app.add_subcommand("perplexity", "Perplexity of a text (llama.cpp protocol)");
  auto* chat = app.add_subcommand("chat", "Interactive chat with the model's chat template");
  auto* bench = app.add_subcommand("bench", "Prompt and generation speed, GB/s against measured bandwidth");
  auto* tokenize = app.add_subcommand("tokenize", "Token ids of a text with the model's tokenizer");
  auto run_info = kmq::tools::add_info(*info);
  auto run_complete = kmq::tools::add_complete(*complete);
  auto run_ppl = kmq::tools::add_perplexity(*ppl);
  auto run_chat = kmq::tools::add_chat(*chat);
  auto run_bench = kmq::tools::add_bench(*bench);
  auto run_tokenize = kmq::tools::add_tokenize(*tokenize);
  CLI11_PARSE(app, argc, argv);
  try {
    if (info->parsed()) return run_info();
    if (complete->parsed()) return run_complete();
    if (ppl->parsed()) return run_ppl();
    if (chat->parsed()) return run_chat();
    if (bench->parsed()) return run_bench();
    if (tokenize->parsed()) return run_tokenize();
  } catch (const std::exception& e) {
    fmt::print(stderr, "kmq: error: {}\n", e.what());
    return 1;
  }
  return 1;
}
