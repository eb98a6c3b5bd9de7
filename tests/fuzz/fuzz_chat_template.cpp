// Fuzz target: the chat-template renderer (a Jinja subset, src/text/chat_template*) on an
// arbitrary template text. The input is the template; a NUL byte, if any, splits off the
// text that becomes every message's content (so hostile contents meet real templates too).
// Parsing and rendering may refuse with kmq::Error; anything else (a crash, a hang past the
// renderer's step bound, an exception of another type) is a finding, and an accepted
// render must stay within the renderer's documented 1 MB output bound.
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "kmq/error.h"
#include "text/chat_template.h"

KMQ_FUZZ_TARGET(chat_template) {
  const std::string in(reinterpret_cast<const char*>(data), size);
  const size_t nul = in.find('\0');
  const std::string source = in.substr(0, nul);
  const std::string content = nul == std::string::npos ? std::string("Hello, how are you?") : in.substr(nul + 1);
  const std::vector<kmq::ChatMessage> msgs = {{"system", "You are terse."},
                                              {"user", content},
                                              {"assistant", content},
                                              {"user", "And " + content}};
  try {
    const kmq::ChatTemplate t(source);
    for (bool gen : {true, false}) {
      kmq::ChatTemplateOptions o;
      o.bos_token = "<s>";
      o.eos_token = "</s>";
      o.add_generation_prompt = gen;
      try {
        const std::string out = t.render(msgs, o);
        KMQ_FUZZ_CHECK(out.size() <= (size_t(1) << 20) + 4 * content.size() + 4096);
      } catch (const kmq::Error&) {
      }
    }
  } catch (const kmq::Error&) {
  }
  return 0;
}
