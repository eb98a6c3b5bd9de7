// SentencePiece BPE encoding: the text is normalized (spaces -> U+2581, dummy prefix,
// optional whitespace collapsing), split into characters, and the adjacent pair whose
// concatenation is the highest-scoring piece is merged until none is left.
#include "text/spm.h"

#include <algorithm>
#include <queue>

#include "text/text_util.h"

namespace kmq::text {

SpmEncoder::SpmEncoder(const TokenizerData& d) : d_(d) {
  byte_ids_.fill(-1);
  const size_t n = d.tokens.size();
  pieces_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const TokenType t = d.types.empty() ? TokenType::kNormal : d.types[i];
    const std::string_view piece = d.tokens[i];
    if (t == TokenType::kByte) {
      const int b = parse_byte_piece(piece);
      if (b >= 0 && byte_ids_[b] < 0) byte_ids_[b] = int32_t(i);
    } else if (t == TokenType::kNormal || t == TokenType::kUserDefined || t == TokenType::kUnused) {
      if (piece.empty()) continue;
      pieces_.emplace(piece, int32_t(i));  // first id wins for duplicates
      if (t == TokenType::kUserDefined) user_by_first_byte_[uint8_t(piece[0])].push_back(int32_t(i));
    }
  }
  // Words may be encoded separately when no mergeable piece has U+2581 after another
  // character (sentencepiece's split_by_whitespace vocabularies: "\u2581the", "\u2581\u2581").
  split_words_ = true;
  for (const auto& [piece, id] : pieces_) {
    size_t i = 0;
    while (piece.compare(i, kSpmSpace.size(), kSpmSpace) == 0) i += kSpmSpace.size();
    if (piece.find(kSpmSpace, i) != std::string_view::npos) {
      split_words_ = false;
      break;
    }
  }
  for (auto& v : user_by_first_byte_)
    std::stable_sort(v.begin(), v.end(),
                     [&](int32_t a, int32_t b) { return d.tokens[a].size() > d.tokens[b].size(); });
}

int32_t SpmEncoder::lookup(std::string_view piece) const {
  const auto it = pieces_.find(piece);
  return it == pieces_.end() ? -1 : it->second;
}

// Output one final symbol: its id; an unused piece split back into the two pieces it was
// merged from (sentencepiece "resegment"); an unknown piece as byte pieces or <unk>.
void SpmEncoder::emit(
    std::string_view piece, std::vector<int32_t>& out,
    const std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>>& rev_merge,
    int depth) const {
  const int32_t id = lookup(piece);
  if (id >= 0) {
    const bool unused = !d_.types.empty() && d_.types[id] == TokenType::kUnused;
    const auto it = unused && depth < 64 ? rev_merge.find(piece) : rev_merge.end();
    if (it == rev_merge.end()) {
      out.push_back(id);
      return;
    }
    emit(it->second.first, out, rev_merge, depth + 1);
    emit(it->second.second, out, rev_merge, depth + 1);
    return;
  }
  if (d_.byte_fallback) {
    for (char c : piece) {
      const int32_t b = byte_ids_[uint8_t(c)];
      if (b >= 0)
        out.push_back(b);
      else if (d_.unk_id >= 0)
        out.push_back(d_.unk_id);
    }
  } else if (d_.unk_id >= 0) {
    out.push_back(d_.unk_id);
  }
}

void SpmEncoder::encode(std::string_view text, bool dummy_prefix, std::vector<int32_t>& out) const {
  // 1. Normalize. remove_extra_whitespaces drops leading/trailing spaces and collapses runs
  //    (U+0020 only: the identity normalizer leaves other whitespace alone).
  std::string norm;
  norm.reserve(text.size() * 3 / 2 + 3);
  if (d_.remove_extra_whitespaces) {
    size_t b = 0, e = text.size();
    while (b < e && text[b] == ' ') ++b;
    while (e > b && text[e - 1] == ' ') --e;
    text = text.substr(b, e - b);
  }
  if (text.empty()) return;
  if (dummy_prefix && d_.add_dummy_prefix) norm += kSpmSpace;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == ' ') {
      if (d_.remove_extra_whitespaces && i > 0 && text[i - 1] == ' ') continue;
      norm += kSpmSpace;
    } else {
      norm += text[i];
    }
  }
  const std::string_view s = norm;
  if (!split_words_) {
    encode_word(s, out);
    return;
  }
  // Words: cut before each U+2581 that follows another character. No mergeable piece
  // spans such a cut (checked in the constructor), so the words encode independently and
  // repeated words come from a per-call cache.
  std::unordered_map<std::string_view, std::pair<uint32_t, uint32_t>> cache;
  std::vector<int32_t> arena;
  const auto flush = [&](std::string_view w) {
    const auto it = cache.find(w);
    if (it != cache.end()) {
      out.insert(out.end(), arena.begin() + it->second.first, arena.begin() + it->second.second);
      return;
    }
    const size_t b = arena.size();
    encode_word(w, arena);
    cache.emplace(w, std::make_pair(uint32_t(b), uint32_t(arena.size())));
    out.insert(out.end(), arena.begin() + b, arena.end());
  };
  size_t word = 0;
  for (size_t i = 1; i < s.size(); ++i) {
    if (s.compare(i, kSpmSpace.size(), kSpmSpace) == 0 &&
        !(i >= kSpmSpace.size() && s.compare(i - kSpmSpace.size(), kSpmSpace.size(), kSpmSpace) == 0)) {
      flush(s.substr(word, i - word));
      word = i;
    }
  }
  flush(s.substr(word));
}

void SpmEncoder::encode_word(std::string_view s, std::vector<int32_t>& out) const {
  // 2. Initial symbols: user-defined pieces (longest match, frozen), else one UTF-8
  //    character, else one byte of invalid UTF-8.
  std::vector<Symbol> sym;
  sym.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t len = 0;
    bool frozen = false;
    for (int32_t id : user_by_first_byte_[uint8_t(s[i])]) {
      const std::string& p = d_.tokens[id];
      if (s.compare(i, p.size(), p) == 0) {
        len = p.size();
        frozen = true;
        break;
      }
    }
    if (len == 0) len = std::max<size_t>(1, utf8_seq_len(s, i));
    const int32_t k = int32_t(sym.size());
    sym.push_back({uint32_t(i), uint32_t(len), k - 1, -1, frozen});
    if (k > 0) sym[k - 1].next = k;
    i += len;
  }

  // 3. Merge by score: highest score first, leftmost on ties.
  struct Pair {
    float score;
    int32_t left, right;
    uint32_t size;
  };
  const auto worse = [](const Pair& a, const Pair& b) {
    return a.score != b.score ? a.score < b.score : a.left > b.left;
  };
  std::priority_queue<Pair, std::vector<Pair>, decltype(worse)> agenda(worse);
  std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;
  const auto piece_of = [&](int32_t k) { return s.substr(sym[k].start, sym[k].len); };
  const auto try_pair = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0 || sym[l].frozen || sym[r].frozen) return;
    const std::string_view merged = s.substr(sym[l].start, sym[l].len + sym[r].len);
    const int32_t id = lookup(merged);
    if (id < 0) return;
    const float score = d_.scores.empty() ? 0.0f : d_.scores[id];
    agenda.push({score, l, r, uint32_t(merged.size())});
    if (!d_.types.empty() && d_.types[id] == TokenType::kUnused)
      rev_merge.insert_or_assign(merged, std::make_pair(piece_of(l), piece_of(r)));
  };
  for (int32_t k = 0; k + 1 < int32_t(sym.size()); ++k) try_pair(k, k + 1);
  while (!agenda.empty()) {
    const Pair top = agenda.top();
    agenda.pop();
    Symbol& l = sym[top.left];
    Symbol& r = sym[top.right];
    if (l.len == 0 || r.len == 0 || l.next != top.right || l.len + r.len != top.size) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (l.next >= 0) sym[l.next].prev = top.left;
    try_pair(l.prev, top.left);
    try_pair(top.left, l.next);
  }

  // 4. Emit the surviving symbols in order.
  for (int32_t k = sym.empty() ? -1 : 0; k >= 0; k = sym[k].next) emit(piece_of(k), out, rev_merge, 0);
}

}  // namespace kmq::text
