// The subcommands of `kmq`: each registers its options on the app and returns the
// function that runs it (returning the exit code).
#pragma once
#include <CLI/CLI.hpp>
#include <functional>

#include "kmq/sampling.h"

namespace kmq::tools {

using Runner = std::function<int()>;

Runner add_info(CLI::App& app);
Runner add_complete(CLI::App& app);
Runner add_perplexity(CLI::App& app);
Runner add_chat(CLI::App& app);
Runner add_bench(CLI::App& app);
Runner add_tokenize(CLI::App& app);

// --temp, --top-k, --top-p, --min-p, the penalties and --seed (cmd_sampling_flags.cpp).
void add_sampler_flags(CLI::App& app, SamplerOptions& s);
// Length of the longest prefix of s that ends on a UTF-8 character boundary (for streaming
// token bytes without splitting a character).
size_t complete_utf8_prefix(const std::string& s);

// Reads a whole text file, or stdin for "-"; throws kmq::Error naming the file.
std::string read_input_text(const std::string& path);

}  // namespace kmq::tools
