// Byte-level BPE encoding (see bpe.h). Both modes run the same loop: a min-heap of
// candidate pairs ordered by (rank, position), entries checked for staleness when popped.
#include "text/bpe.h"

#include <fmt/format.h>

#include <algorithm>
#include <string>

#include "kmq/error.h"

namespace kmq::text {
namespace {

constexpr size_t kMaxCachedPiece = 256;  // longer pieces are rare; not worth caching

uint64_t pair_key(int32_t a, int32_t b) { return uint64_t(uint32_t(a)) << 32 | uint32_t(b); }

}  // namespace

struct BpeEncoder::Scratch {
  struct Symbol {
    int32_t id;           // current token id (-1: a byte with no token)
    int32_t prev, next;   // live list (-1 = none)
    uint32_t start, len;  // byte range in the piece; len 0 = merged away
  };
  struct Cand {
    int32_t rank, left, right, left_id, right_id, new_id;
  };
  struct Worse {
    bool operator()(const Cand& a, const Cand& b) const {
      return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
    }
  };
  std::vector<Symbol> sym;
  std::vector<Cand> heap;
};

BpeEncoder::BpeEncoder(const TokenizerData& d) : d_(d), pre_(d.pre_tokenizer), rank_mode_(d.merges.empty()) {
  byte_ids_.fill(-1);
  vocab_.reserve(d.tokens.size());
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    const TokenType t = d.types.empty() ? TokenType::kNormal : d.types[i];
    if (t != TokenType::kNormal || d.tokens[i].empty()) continue;
    vocab_.emplace(d.tokens[i], int32_t(i));  // first id wins for duplicates
    if (d.tokens[i].size() == 1 && byte_ids_[uint8_t(d.tokens[i][0])] < 0)
      byte_ids_[uint8_t(d.tokens[i][0])] = int32_t(i);
  }
  merges_.reserve(d.merges.size());
  for (size_t r = 0; r < d.merges.size(); ++r) {
    const auto& [a, b] = d.merges[r];
    const int32_t ia = lookup(a), ib = lookup(b), ic = lookup(a + b);
    if (ia < 0 || ib < 0 || ic < 0)
      throw Error(fmt::format("tokenizer: merge {} joins pieces that are not (normal) tokens", r));
    merges_.emplace(pair_key(ia, ib), Merge{int32_t(r), ic});  // the first rule wins
  }
}

int32_t BpeEncoder::lookup(std::string_view bytes) const {
  const auto it = vocab_.find(bytes);
  return it == vocab_.end() ? -1 : it->second;
}

void BpeEncoder::encode_piece(std::string_view piece, std::vector<int32_t>& out, Scratch& s) const {
  if (rank_mode_) {  // tiktoken: a piece that is a token is taken whole
    const int32_t id = lookup(piece);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  auto& sym = s.sym;
  auto& heap = s.heap;
  sym.clear();
  heap.clear();
  for (size_t i = 0; i < piece.size(); ++i) {
    const int32_t k = int32_t(i);
    sym.push_back(
        {byte_ids_[uint8_t(piece[i])], k - 1, k + 1 < int32_t(piece.size()) ? k + 1 : -1, uint32_t(i), 1});
  }
  const Scratch::Worse worse;
  const auto try_pair = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0 || sym[l].id < 0 || sym[r].id < 0) return;
    int32_t rank, id;
    if (rank_mode_) {
      id = lookup(piece.substr(sym[l].start, sym[l].len + sym[r].len));
      rank = id;
    } else {
      const auto it = merges_.find(pair_key(sym[l].id, sym[r].id));
      if (it == merges_.end()) return;
      rank = it->second.rank;
      id = it->second.id;
    }
    if (id < 0) return;
    heap.push_back({rank, l, r, sym[l].id, sym[r].id, id});
    std::push_heap(heap.begin(), heap.end(), worse);
  };
  for (int32_t k = 0; k + 1 < int32_t(sym.size()); ++k) try_pair(k, k + 1);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    const Scratch::Cand c = heap.back();
    heap.pop_back();
    auto& l = sym[c.left];
    auto& r = sym[c.right];
    // Stale when either side has changed since the candidate was pushed (symbols only
    // grow, so unchanged ids and adjacency mean unchanged spans).
    if (l.len == 0 || r.len == 0 || l.next != c.right || l.id != c.left_id || r.id != c.right_id) continue;
    l.id = c.new_id;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (l.next >= 0) sym[l.next].prev = c.left;
    try_pair(l.prev, c.left);
    try_pair(c.left, sym[c.left].next);
  }
  for (int32_t k = sym.empty() ? -1 : 0; k >= 0; k = sym[k].next) {
    if (sym[k].id >= 0)
      out.push_back(sym[k].id);
    else if (d_.unk_id >= 0)
      out.push_back(d_.unk_id);  // a byte the vocabulary lacks
  }
}

void BpeEncoder::encode(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<std::string_view> pieces;
  pre_.split(text, pieces);
  Scratch scratch;
  // Cache: piece bytes (viewing `text`) -> [begin, end) in `arena`.
  std::unordered_map<std::string_view, std::pair<uint32_t, uint32_t>> cache;
  std::vector<int32_t> arena;
  for (const std::string_view p : pieces) {
    if (p.size() > kMaxCachedPiece || pieces.size() < 64) {
      encode_piece(p, out, scratch);
      continue;
    }
    const auto it = cache.find(p);
    if (it != cache.end()) {
      out.insert(out.end(), arena.begin() + it->second.first, arena.begin() + it->second.second);
      continue;
    }
    const size_t b = arena.size();
    encode_piece(p, arena, scratch);
    cache.emplace(p, std::make_pair(uint32_t(b), uint32_t(arena.size())));
    out.insert(out.end(), arena.begin() + b, arena.end());
  }
}

}  // namespace kmq::text
