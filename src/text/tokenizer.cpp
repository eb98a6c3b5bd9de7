// kmq::Tokenizer: splits special tokens out of the text, hands the plain segments to the
// SentencePiece or byte-level BPE encoder, and decodes ids back to bytes.
#include "kmq/tokenizer.h"

#include <algorithm>
#include <array>
#include <memory>

#include "kmq/error.h"
#include "text/bpe.h"
#include "text/spm.h"
#include "text/text_util.h"
#include "text/tokenizer_internal.h"

namespace kmq {
namespace {

// Leftmost-longest matching of a set of literal token texts (special tokens are few and
// short, so candidates are bucketed by first byte and tried longest first).
class SpecialMatcher {
 public:
  void add(const std::string& text, int32_t id) {
    if (!text.empty()) by_first_[uint8_t(text[0])].push_back({text, id});
  }
  void finish() {
    for (auto& v : by_first_)
      std::stable_sort(v.begin(), v.end(),
                       [](const Entry& a, const Entry& b) { return a.text.size() > b.text.size(); });
  }
  bool empty() const {
    return std::all_of(by_first_.begin(), by_first_.end(), [](const auto& v) { return v.empty(); });
  }
  // The id of the longest token text at text[pos], or -1; its length in `len`.
  int32_t match(std::string_view text, size_t pos, size_t& len) const {
    for (const Entry& e : by_first_[uint8_t(text[pos])]) {
      if (text.compare(pos, e.text.size(), e.text) == 0) {
        len = e.text.size();
        return e.id;
      }
    }
    return -1;
  }

 private:
  struct Entry {
    std::string_view text;
    int32_t id;
  };
  std::array<std::vector<Entry>, 256> by_first_;
};

// U+2047 with spaces: what sentencepiece shows for <unk>.
constexpr std::string_view kUnkSurface = " \xE2\x81\x87 ";

}  // namespace

struct Tokenizer::Impl {
  TokenizerData d;
  std::unique_ptr<text::SpmEncoder> spm;
  std::unique_ptr<text::BpeEncoder> bpe;
  SpecialMatcher parse_specials;   // parse_special=true: control, unknown (+ user-defined for kBpe)
  SpecialMatcher always_specials;  // kBpe user-defined (added tokens): always split out
  std::vector<uint8_t> eog;        // per id

  TokenType type(int32_t id) const { return d.types.empty() ? TokenType::kNormal : d.types[id]; }

  explicit Impl(TokenizerData data) : d(std::move(data)) {
    text::validate_tokenizer_data(d, "tokenizer");
    if (d.kind == TokenizerKind::kSpm)
      spm = std::make_unique<text::SpmEncoder>(d);
    else
      bpe = std::make_unique<text::BpeEncoder>(d);
    for (size_t i = 0; i < d.tokens.size(); ++i) {
      const TokenType t = type(int32_t(i));
      if (t == TokenType::kControl || t == TokenType::kUnknown) parse_specials.add(d.tokens[i], int32_t(i));
      if (t == TokenType::kUserDefined && d.kind == TokenizerKind::kBpe) {
        parse_specials.add(d.tokens[i], int32_t(i));
        always_specials.add(d.tokens[i], int32_t(i));
      }
    }
    parse_specials.finish();
    always_specials.finish();
    eog.assign(d.tokens.size(), 0);
    if (d.eos_id >= 0) eog[d.eos_id] = 1;
    for (int32_t id : d.eog_ids) eog[id] = 1;
  }

  // `dummy_prefix`: kSpm segment starts the text or follows a special token.
  void encode_plain(std::string_view seg, bool dummy_prefix, std::vector<int32_t>& out) const {
    if (seg.empty()) return;
    if (spm)
      spm->encode(seg, dummy_prefix, out);
    else
      bpe->encode(seg, out);
  }
};

Tokenizer::Tokenizer(TokenizerData data) : impl_(new Impl(std::move(data))) {}
Tokenizer::~Tokenizer() { delete impl_; }
Tokenizer::Tokenizer(Tokenizer&& o) noexcept : impl_(o.impl_) { o.impl_ = nullptr; }
Tokenizer& Tokenizer::operator=(Tokenizer&& o) noexcept {
  if (this != &o) {
    delete impl_;
    impl_ = o.impl_;
    o.impl_ = nullptr;
  }
  return *this;
}

const TokenizerData& Tokenizer::data() const { return impl_->d; }
int32_t Tokenizer::n_vocab() const { return int32_t(impl_->d.tokens.size()); }
bool Tokenizer::is_eog(int32_t id) const {
  return id >= 0 && size_t(id) < impl_->eog.size() && impl_->eog[id] != 0;
}

// Special tokens are matched leftmost-longest before any normalization. For kSpm each text
// segment that starts the text or follows a special token gets the dummy prefix (the
// llama.cpp / Hugging Face "legacy" convention).
std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (add_special && m.d.add_bos) out.push_back(m.d.bos_id);
  const SpecialMatcher& specials = parse_special ? m.parse_specials : m.always_specials;
  if (specials.empty()) {
    m.encode_plain(text, true, out);
  } else {
    size_t seg = 0;
    for (size_t i = 0; i < text.size();) {
      size_t len = 0;
      const int32_t id = specials.match(text, i, len);
      if (id < 0) {
        ++i;
        continue;
      }
      m.encode_plain(text.substr(seg, i - seg), true, out);
      out.push_back(id);
      i += len;
      seg = i;
    }
    m.encode_plain(text.substr(seg), true, out);
  }
  if (add_special && m.d.add_eos) out.push_back(m.d.eos_id);
  return out;
}

std::string Tokenizer::decode_token(int32_t id) const {
  const Impl& m = *impl_;
  if (id < 0 || size_t(id) >= m.d.tokens.size()) return {};
  const std::string& t = m.d.tokens[id];
  switch (m.type(id)) {
    case TokenType::kControl:
      return {};
    case TokenType::kUnknown:
      return m.d.kind == TokenizerKind::kSpm ? std::string(kUnkSurface) : t;
    case TokenType::kByte:
      if (m.d.kind == TokenizerKind::kSpm) return std::string(1, char(text::parse_byte_piece(t)));
      return t;
    default:
      break;
  }
  if (m.d.kind == TokenizerKind::kBpe) return t;
  std::string out;  // kSpm: U+2581 -> ' '
  out.reserve(t.size());
  for (size_t i = 0; i < t.size();) {
    if (t.compare(i, text::kSpmSpace.size(), text::kSpmSpace) == 0) {
      out += ' ';
      i += text::kSpmSpace.size();
    } else {
      out += t[i++];
    }
  }
  return out;
}

// kSpm with a dummy prefix: the first text token of the sequence, and the first after each
// control token, loses one leading space (the inverse of encode()).
std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  const Impl& m = *impl_;
  const bool strip = m.d.kind == TokenizerKind::kSpm && m.d.add_dummy_prefix;
  std::string out;
  bool at_start = true;
  for (int32_t id : ids) {
    if (id < 0 || size_t(id) >= m.d.tokens.size()) continue;
    const TokenType t = m.type(id);
    if (t == TokenType::kControl) {
      at_start = true;
      continue;
    }
    std::string piece = decode_token(id);
    if (strip && at_start && t != TokenType::kByte && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    at_start = false;
    out += piece;
  }
  return out;
}

}  // namespace kmq
