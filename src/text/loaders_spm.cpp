// SentencePiece loaders: the protobuf tokenizer.model (BPE models only) and llama2.c's
// tokenizer.bin. Both produce TokenizerKind::kSpm data.
#include <fmt/format.h>

#include <cstring>

#include "kmq/error.h"
#include "kmq/tokenizer.h"
#include "text/protobuf_reader.h"
#include "text/spm.h"
#include "text/text_util.h"
#include "text/tokenizer_internal.h"
#include "util/mmap_file.h"

namespace kmq {
namespace {

// sentencepiece_model.proto field numbers used here.
constexpr uint32_t kModelPieces = 1, kModelTrainerSpec = 2, kModelNormalizerSpec = 3;
constexpr uint32_t kPieceText = 1, kPieceScore = 2, kPieceType = 3;
constexpr uint32_t kTrainerModelType = 3, kTrainerTreatWsAsSuffix = 24, kTrainerByteFallback = 35,
                   kTrainerUnkId = 40, kTrainerBosId = 41, kTrainerEosId = 42, kTrainerPadId = 43;
constexpr uint32_t kNormName = 1, kNormCharsmap = 2, kNormAddDummyPrefix = 3, kNormRemoveExtraWs = 4,
                   kNormEscapeWs = 5;
constexpr int kModelTypeUnigram = 1, kModelTypeBpe = 2;

int32_t id_or_none(int32_t id, size_t n) { return id >= 0 && size_t(id) < n ? id : -1; }

}  // namespace

TokenizerData text::parse_spm_model_proto(std::string_view buf, const std::string& where) {
  using text::ProtoField;
  using text::ProtoReader;
  TokenizerData d;
  d.kind = TokenizerKind::kSpm;
  // Protobuf defaults (proto2) for the fields we read.
  int model_type = kModelTypeUnigram;
  int32_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  bool byte_fallback = false, treat_ws_as_suffix = false, escape_ws = true;
  bool add_dummy_prefix = true, remove_extra_ws = true;
  std::string norm_name;
  size_t charsmap_size = 0;

  ProtoReader top(buf, where);
  ProtoField f;
  while (top.next(f)) {
    if (f.number == kModelPieces) {
      top.expect(f, 2, "pieces");
      if (d.tokens.size() >= text::kMaxVocab) throw Error(where + ": too many pieces");
      ProtoReader pr(f.bytes, fmt::format("{}: piece {}", where, d.tokens.size()));
      std::string piece;
      float score = 0.0f;
      int type = int(TokenType::kNormal);
      ProtoField g;
      while (pr.next(g)) {
        if (g.number == kPieceText) {
          pr.expect(g, 2, "piece");
          piece.assign(g.bytes);
        } else if (g.number == kPieceScore) {
          pr.expect(g, 5, "score");
          score = g.as_float();
        } else if (g.number == kPieceType) {
          pr.expect(g, 0, "type");
          type = g.as_int32();
        }
      }
      if (type < 1 || type > 6)
        throw Error(fmt::format("{}: piece {} has invalid type {}", where, d.tokens.size(), type));
      d.tokens.push_back(std::move(piece));
      d.scores.push_back(score);
      d.types.push_back(TokenType(type));
    } else if (f.number == kModelTrainerSpec) {
      top.expect(f, 2, "trainer_spec");
      ProtoReader tr(f.bytes, where + ": trainer_spec");
      ProtoField g;
      while (tr.next(g)) {
        if (g.wire != 0) continue;
        switch (g.number) {
          case kTrainerModelType:
            model_type = g.as_int32();
            break;
          case kTrainerTreatWsAsSuffix:
            treat_ws_as_suffix = g.value != 0;
            break;
          case kTrainerByteFallback:
            byte_fallback = g.value != 0;
            break;
          case kTrainerUnkId:
            unk_id = g.as_int32();
            break;
          case kTrainerBosId:
            bos_id = g.as_int32();
            break;
          case kTrainerEosId:
            eos_id = g.as_int32();
            break;
          case kTrainerPadId:
            pad_id = g.as_int32();
            break;
          default:
            break;
        }
      }
    } else if (f.number == kModelNormalizerSpec) {
      top.expect(f, 2, "normalizer_spec");
      ProtoReader nr(f.bytes, where + ": normalizer_spec");
      ProtoField g;
      while (nr.next(g)) {
        if (g.number == kNormName && g.wire == 2)
          norm_name.assign(g.bytes);
        else if (g.number == kNormCharsmap && g.wire == 2)
          charsmap_size = g.bytes.size();
        else if (g.number == kNormAddDummyPrefix && g.wire == 0)
          add_dummy_prefix = g.value != 0;
        else if (g.number == kNormRemoveExtraWs && g.wire == 0)
          remove_extra_ws = g.value != 0;
        else if (g.number == kNormEscapeWs && g.wire == 0)
          escape_ws = g.value != 0;
      }
    }
  }
  if (d.tokens.empty()) throw Error(where + ": no pieces (not a SentencePiece model?)");
  if (model_type != kModelTypeBpe)
    throw Error(fmt::format("{}: SentencePiece model_type {} ({}) is not supported, only BPE (2)", where,
                            model_type, model_type == kModelTypeUnigram ? "unigram" : "other"));
  if (charsmap_size != 0 && norm_name != "identity")
    throw Error(
        fmt::format("{}: normalizer '{}' with a precompiled charsmap is not supported (only identity)", where,
                    norm_name));
  if (treat_ws_as_suffix) throw Error(where + ": treat_whitespace_as_suffix is not supported");
  if (!escape_ws) throw Error(where + ": escape_whitespaces=false is not supported");

  const size_t n = d.tokens.size();
  d.unk_id = id_or_none(unk_id, n);
  d.bos_id = id_or_none(bos_id, n);
  d.eos_id = id_or_none(eos_id, n);
  d.pad_id = id_or_none(pad_id, n);
  d.add_bos = d.bos_id >= 0;  // the Llama convention; sentencepiece itself adds nothing
  d.add_eos = false;
  d.add_dummy_prefix = add_dummy_prefix;
  d.remove_extra_whitespaces = remove_extra_ws;
  d.byte_fallback = byte_fallback;
  text::set_eog_ids(d);
  text::validate_tokenizer_data(d, where);
  return d;
}

TokenizerData load_tokenizer_spm_model(const std::filesystem::path& model_file) {
  MappedFile f(model_file);
  return text::parse_spm_model_proto(std::string_view(reinterpret_cast<const char*>(f.data()), f.size()),
                                     model_file.string());
}

TokenizerData load_tokenizer_llama2c(const std::filesystem::path& bin_file, int64_t n_vocab) {
  const std::string where = bin_file.string();
  MappedFile f(bin_file);
  const auto* p = f.data();
  const size_t size = f.size();
  if (n_vocab > int64_t(text::kMaxVocab))
    throw Error(fmt::format("{}: n_vocab {} too large", where, n_vocab));
  if (size < 4) throw Error(where + ": too short for a llama2.c tokenizer (no max_token_length)");
  int32_t max_len;
  std::memcpy(&max_len, p, 4);
  if (max_len <= 0 || max_len > (1 << 20))
    throw Error(fmt::format("{}: implausible max_token_length {}", where, max_len));

  TokenizerData d;
  d.kind = TokenizerKind::kSpm;
  size_t pos = 4;
  // n_vocab <= 0: read tokens until the end of the file.
  while (n_vocab > 0 ? int64_t(d.tokens.size()) < n_vocab : pos < size) {
    const size_t id = d.tokens.size();
    if (id >= text::kMaxVocab) throw Error(where + ": too many tokens");
    if (pos == size)  // n_vocab > 0: the file ends before the checkpoint's vocabulary does
      throw Error(fmt::format("{}: the tokenizer has {} tokens but the checkpoint's vocab_size is {}", where, id,
                              n_vocab));
    if (size - pos < 8)
      throw Error(fmt::format("{}: token {}: header past end of file (offset {})", where, id, pos));
    float score;
    int32_t len;
    std::memcpy(&score, p + pos, 4);
    std::memcpy(&len, p + pos + 4, 4);
    pos += 8;
    if (len < 0 || size_t(len) > size - pos)
      throw Error(
          fmt::format("{}: token {}: length {} at offset {} past end of file", where, id, len, pos - 4));
    std::string t(reinterpret_cast<const char*>(p + pos), size_t(len));
    pos += size_t(len);
    // llama2.c's export wrote "\n<s>\n" / "\n</s>\n" for BOS/EOS and replaced U+2581 by ' '.
    TokenType type = TokenType::kNormal;
    if (id == 0) {
      t = "<unk>";
      type = TokenType::kUnknown;
    } else if (id == 1 || id == 2) {
      t = id == 1 ? "<s>" : "</s>";
      type = TokenType::kControl;
    } else if (text::parse_byte_piece(t) >= 0) {
      type = TokenType::kByte;
    } else {
      std::string esc;
      for (char c : t) esc += c == ' ' ? std::string(text::kSpmSpace) : std::string(1, c);
      t = std::move(esc);
    }
    d.tokens.push_back(std::move(t));
    d.scores.push_back(score);
    d.types.push_back(type);
  }
  if (pos != size)  // a larger tokenizer than the checkpoint's vocabulary: not its tokenizer
    throw Error(fmt::format("{}: the tokenizer has more tokens than the checkpoint's vocab_size {} ({} bytes "
                            "left after token {})", where, n_vocab, size - pos, n_vocab - 1));
  if (d.tokens.size() < 3) throw Error(fmt::format("{}: only {} tokens", where, d.tokens.size()));
  d.unk_id = 0;
  d.bos_id = 1;
  d.eos_id = 2;
  d.add_bos = true;
  d.add_dummy_prefix = true;           // llama2.c's encoder prepends " "
  d.remove_extra_whitespaces = false;  // and never collapses spaces
  d.byte_fallback = true;
  text::set_eog_ids(d);
  text::validate_tokenizer_data(d, where);
  return d;
}

}  // namespace kmq
