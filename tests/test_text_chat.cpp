// Chat templates: the real Llama-3 template against its golden prompt and ids, five more
// families and the Jinja subset against jinja2-rendered outputs (tests/data/chat/cases.json,
// made by tests/data/chat/generate_expected.py), and the bounds on untrusted templates.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "kmq/tokenizer.h"
#include "test_util.h"
#include "text/chat_template.h"
#include "util/mmap_file.h"

using namespace kmq;
using Json = nlohmann::json;

namespace {

const std::filesystem::path kDataDir = std::filesystem::path(KMQ_SOURCE_DIR) / "tests/data/chat";
const char* const kNames[] = {"llama3", "llama2", "mistral", "chatml", "phi3", "gemma"};

std::string data_file(const std::string& name) { return read_text_file(kDataDir / name); }

std::vector<ChatMessage> messages_of(const Json& j) {
  std::vector<ChatMessage> out;
  for (const auto& m : j) out.push_back({m["role"], m["content"]});
  return out;
}

ChatTemplateOptions options_of(const Json& c) {
  ChatTemplateOptions o;
  o.bos_token = c["bos_token"];
  o.eos_token = c["eos_token"];
  o.add_generation_prompt = c["add_generation_prompt"];
  return o;
}

std::string render(const std::string& src, std::vector<ChatMessage> msgs = {},
                   bool add_generation_prompt = true) {
  ChatTemplateOptions o;
  o.bos_token = "<s>";
  o.eos_token = "</s>";
  o.add_generation_prompt = add_generation_prompt;
  return ChatTemplate(src).render(msgs, o);
}

}  // namespace

TEST_CASE("Llama-3: the real template renders the golden prompt and its ids") {
  if (!test::have_shared("tokenizers/llama3-hf/tokenizer_config.json")) return;
  const auto dir = test::shared_dir() / "tokenizers/llama3-hf";
  const Json config = Json::parse(read_text_file(dir / "tokenizer_config.json"));
  const std::string source = config["chat_template"];
  CHECK(source == builtin_chat_template("llama3"));
  CHECK(source == data_file("llama3.jinja"));
  const Json golden = Json::parse(read_text_file(dir / "golden.json"))["with_specials"][0];
  const std::vector<ChatMessage> msgs = {{"system", "You are a helpful assistant."},
                                         {"user", "What is the capital of France?"}};
  ChatTemplateOptions o;
  o.bos_token = config["bos_token"];
  o.eos_token = config["eos_token"];
  const std::string text = ChatTemplate(source).render(msgs, o);
  CHECK(text == golden["text"].get<std::string>());
  if (!test::have_shared("tokenizers/llama3-tiktoken/tokenizer.model")) return;
  const Tokenizer tok(load_tokenizer_tiktoken(test::shared_dir() / "tokenizers/llama3-tiktoken/tokenizer.model"));
  CHECK(tok.encode(text, false, true) == golden["ids"].get<std::vector<int32_t>>());
}

TEST_CASE("built-in templates are the published texts and render the 3-turn conversation") {
  const std::vector<ChatMessage> system_and_turns = {
      {"system", "You are a helpful assistant."},
      {"user", "What is the capital of France?"},
      {"assistant", "  The capital of France is Paris.  "},
      {"user", "And of Italy?\nAnswer in one word."}};
  const std::vector<ChatMessage> turns(system_and_turns.begin() + 1, system_and_turns.end());
  const Json cases = Json::parse(data_file("cases.json"))["cases"];
  for (const char* name : kNames) {
    CAPTURE(name);
    const std::string& src = builtin_chat_template(name);
    CHECK(src == data_file(std::string(name) + ".jinja"));
    ChatTemplateOptions o;
    for (const auto& c : cases)
      if (c["template"] == name) o = options_of(c);
    o.add_generation_prompt = true;
    const ChatTemplate t(src);
    const std::string expected = data_file(std::string(name) + ".expected");
    const bool folds = std::string(name) == "mistral" || std::string(name) == "gemma";
    if (folds) {
      CHECK(t.render(turns, o) == expected);
      CHECK(!test::error_of([&] { t.render(system_and_turns, o); }).empty());
    } else {
      CHECK(t.render(system_and_turns, o) == expected);
    }
  }
  test::check_error([] { builtin_chat_template("vicuna"); }, {"vicuna", "llama3", "chatml", "gemma"});
  CHECK(builtin_chat_template_names().size() == 6);
}

TEST_CASE("templates and Jinja features agree with jinja2 (cases.json)") {
  const Json data = Json::parse(data_file("cases.json"));
  int n_out = 0, n_err = 0;
  for (const auto& c : data["cases"]) {
    const std::string src = c["template"] == "feature" ? c["source"].get<std::string>()
                                                       : data_file(c["template"].get<std::string>() + ".jinja");
    const std::string variant = c.value("variant", "");
    const bool gen = c["add_generation_prompt"];
    CAPTURE(src);
    CAPTURE(variant);
    CAPTURE(gen);
    const auto msgs = messages_of(c["messages"]);
    const auto opts = options_of(c);
    if (c.contains("output")) {
      std::string got;
      const std::string err = test::error_of([&] { got = ChatTemplate(src).render(msgs, opts); });
      CHECK(err == "");
      CHECK(got == c["output"].get<std::string>());
      ++n_out;
    } else {
      const std::string want = c["error"];
      const std::string err = test::error_of([&] { ChatTemplate(src).render(msgs, opts); });
      CAPTURE(want);
      CHECK(!err.empty());
      // A raise_exception message comes through word for word.
      if (src.find(want) != std::string::npos || want.rfind("custom failure", 0) == 0)
        CHECK(err == "chat template raised: " + want);
      ++n_err;
    }
  }
  MESSAGE(fmt::format("{} renderings and {} errors checked against {}", n_out, n_err,
                      data["generator"].get<std::string>()));
  CHECK(n_out > 60);
  CHECK(n_err > 15);
}

TEST_CASE("add_generation_prompt and the empty conversation") {
  const std::string& chatml = builtin_chat_template("chatml");
  CHECK(render(chatml, {}, true) == "<|im_start|>assistant\n");
  CHECK(render(chatml, {}, false) == "");
  CHECK(render(builtin_chat_template("phi3"), {}, false) == "</s>");
  CHECK(render(builtin_chat_template("llama3"), {{"user", "hi"}}, false) ==
        "<s><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>");
  // Llama-2 and Gemma index messages[0]: on an empty list that is an error, as in jinja2.
  test::check_error([] { render(builtin_chat_template("llama2")); }, {"no element 0"});
}

TEST_CASE("raise_exception carries the template's message") {
  const std::vector<ChatMessage> bad = {{"user", "a"}, {"user", "b"}};
  test::check_error([&] { render(builtin_chat_template("llama2"), bad); },
                    {"Conversation roles must alternate user/assistant/user/assistant/..."});
  test::check_error([&] { render(builtin_chat_template("gemma"), {{"system", "s"}, {"user", "u"}}); },
                    {"System role not supported"});
  test::check_error([&] { render(builtin_chat_template("mistral"), {{"user", "u"}, {"tool", "x"}}); },
                    {"Only user and assistant roles are supported!"});
}

TEST_CASE("syntax errors name the line and column") {
  test::check_error([] { ChatTemplate("line one\n{% if x %}\nno end"); }, {"line 2", "'if' block is never closed"});
  test::check_error([] { ChatTemplate("a\nb\n  {{ 1 + }}"); }, {"line 3", "column 10"});
  test::check_error([] { ChatTemplate("{% for x in y %}{% endif %}"); }, {"line 1", "endif"});
  test::check_error([] { ChatTemplate("{{ 'abc }}"); }, {"unterminated string"});
  test::check_error([] { ChatTemplate("{{ x "); }, {"unterminated tag"});
  test::check_error([] { ChatTemplate("{# x "); }, {"unterminated comment"});
  test::check_error([] { ChatTemplate("{% macro f() %}{% endmacro %}"); }, {"macro"});
  test::check_error([] { ChatTemplate("{{ x $ y }}"); }, {"unexpected character"});
  test::check_error([] { ChatTemplate("\n\n{{ x | no_such_filter }}"); }, {"line 3", "unknown filter 'no_such_filter'"});
  test::check_error([] { ChatTemplate("{{ x is no_such_test }}"); }, {"unknown test"});
  test::check_error([] { ChatTemplate("{% endfor %}"); }, {"endfor"});
  test::check_error([] { ChatTemplate("{% else %}"); }, {"else"});
  test::check_error([] { ChatTemplate("{{ 99999999999999999999 }}"); }, {"out of range"});
}

TEST_CASE("untrusted templates: nesting, loops, output and string sizes are bounded") {
  std::string deep;
  for (int k = 0; k < 10000; ++k) deep += "{% if true %}";
  test::check_error([&] { ChatTemplate{deep}; }, {"nested too deeply"});
  test::check_error([] { ChatTemplate("{{ " + std::string(10000, '(') + "1" + std::string(10000, ')') + " }}"); },
                    {"nested too deeply"});
  test::check_error([] { ChatTemplate("{{ " + std::string(10000, '-') + "1 }}"); }, {"nested too deeply"});
  test::check_error([] { ChatTemplate("{{ " + std::string(10000, '[') + " }}"); }, {"nested too deeply"});
  test::check_error([] { ChatTemplate("{{ not " + [] { std::string s; for (int k = 0; k < 10000; ++k) s += "not "; return s; }() + "1 }}"); },
                    {"nested too deeply"});
  // Nesting within the bound works.
  std::string ok;
  for (int k = 0; k < 30; ++k) ok += "{% if true %}";
  ok += "x";
  for (int k = 0; k < 30; ++k) ok += "{% endif %}";
  CHECK(render(ok) == "x");
  test::check_error([] { render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"); },
                    {"steps"});
  test::check_error([] { render("{% for i in range(10000) %}{{ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' }}{% endfor %}"); },
                    {"output larger"});
  test::check_error([] { render("{{ 'x' * 100000000 }}"); }, {"too long"});
  test::check_error([] { render("{% set ns = namespace(s='xx') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}"); },
                    {"longer than"});
  test::check_error([] { render("{{ range(100000000) | length }}"); }, {"too long"});
  test::check_error([] { render("{{ 9223372036854775807 + 1 }}"); }, {"overflow"});
  test::check_error([] { render("{{ 1 // 0 }}"); }, {"zero"});
  test::check_error([] { render("{{ messages.x.y }}"); }, {"no attribute"});
  test::check_error([] { render("{{ undefined_function(1) }}"); }, {"undefined"});
}

TEST_CASE("random mutations of the real templates never crash") {
  std::mt19937_64 rng(7);
  const std::string alphabet = "{}%#-+()[]'\".|,:=~ \nabcdefgijklmnoprstux0123456789";
  const std::vector<ChatMessage> msgs = {{"system", "s"}, {"user", "u"}, {"assistant", "a"}};
  int parsed = 0;
  for (int it = 0; it < 3000; ++it) {
    std::string src = builtin_chat_template(kNames[it % 6]);
    const int n_edits = 1 + int(rng() % 4);
    for (int k = 0; k < n_edits; ++k) {
      const size_t at = rng() % (src.size() + 1);
      switch (rng() % 3) {
        case 0: src.insert(src.begin() + long(at), alphabet[rng() % alphabet.size()]); break;
        case 1: if (at < src.size()) src.erase(at, 1 + rng() % 8); break;
        default: if (at < src.size()) src[at] = alphabet[rng() % alphabet.size()]; break;
      }
    }
    try {
      const ChatTemplate t(src);
      ++parsed;
      ChatTemplateOptions o;
      t.render(msgs, o);
    } catch (const Error&) {
    }
  }
  CHECK(parsed > 100);
}

TEST_CASE("Llama-3.1 template layout: rendered and tokenized as jinja2 renders it") {
  // tests/data/chat/llama31.jinja (dates in the system header, tools, tool calls, ipython)
  // rendered by jinja2 into llama31.expected for the fixed 3-turn conversation.
  const std::vector<ChatMessage> msgs = {{"system", "You are a helpful assistant."},
                                         {"user", "What is the capital of France?"},
                                         {"assistant", "  The capital of France is Paris.  "},
                                         {"user", "And of Italy?\nAnswer in one word."}};
  ChatTemplateOptions o;
  o.bos_token = "<|begin_of_text|>";
  o.eos_token = "<|eot_id|>";
  const std::string got = ChatTemplate(data_file("llama31.jinja")).render(msgs, o);
  const std::string want = data_file("llama31.expected");
  CHECK(got == want);
  CHECK(got.find("Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n") != std::string::npos);
  if (!test::have_shared("tokenizers/llama3-tiktoken/tokenizer.model")) return;
  const Tokenizer tok(load_tokenizer_tiktoken(test::shared_dir() / "tokenizers/llama3-tiktoken/tokenizer.model"));
  const auto ids = tok.encode(got, false, true);
  CHECK(ids == tok.encode(want, false, true));
  REQUIRE(ids.size() > 4);
  CHECK(ids[0] == 128000);  // <|begin_of_text|>
  CHECK(ids[1] == 128006);  // <|start_header_id|>
  CHECK(std::count(ids.begin(), ids.end(), 128009) == 4);  // <|eot_id|> after system and each turn
}
