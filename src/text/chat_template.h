// Chat templates: a Jinja subset that renders the chat_template of a model's
// tokenizer_config.json the way Hugging Face's apply_chat_template does (jinja2 with
// trim_blocks and lstrip_blocks), plus the built-in templates behind --chat-template NAME.
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace kmq {

struct ChatMessage {
  std::string role, content;
};

struct ChatTemplateOptions {
  std::string bos_token, eos_token;
  bool add_generation_prompt = true;
  // Defined as the template variable `date_string` when not empty (Llama-3.1 style).
  std::string date_string = "26 Jul 2024";
};

namespace chat {
struct Program;
}

// Parses once (kmq::Error with line and column on a syntax error, an unknown filter or
// test, or nesting deeper than the bound); renders many times. Rendering throws kmq::Error
// on raise_exception (with the template's message), a runtime type error, an undefined
// value used as an object, or when a bound is passed (1 MB output, 1e6 steps).
// Thread-safe: render() keeps no state between calls.
class ChatTemplate {
 public:
  explicit ChatTemplate(std::string source);
  std::string render(const std::vector<ChatMessage>& messages,
                     const ChatTemplateOptions& options) const;
  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::shared_ptr<const chat::Program> program_;
};

// Built-in templates for --chat-template NAME: "llama3", "llama2", "mistral", "chatml",
// "phi3", "gemma" (the texts published in those models' tokenizer_config.json).
// Throws kmq::Error listing the names for any other name.
const std::string& builtin_chat_template(const std::string& name);
std::vector<std::string> builtin_chat_template_names();

}  // namespace kmq
