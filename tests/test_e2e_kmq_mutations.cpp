// A real .kmq (stories260K converted with float, f16 and 3-bit group-quantized tensors),
// damaged in every way a download or a hostile file can damage it: truncated at every
// section and tensor boundary, bit flips in the header, metadata and directory (raw, and
// with the checksums repaired so the flips reach the validation behind them), padding
// bytes, payload bytes, and directory or header offsets pointing past the end or into
// each other. Every variant must be rejected with a kmq::Error naming the file, or load
// and be caught by KmqFile::verify() (what `kmq info --verify` runs) where only payload
// bytes changed. A variant that loads is also run (Model::load and two tokens), so an
// inconsistency that slips through would show as a crash or a sanitizer report; each
// variant runs under a 60 s alarm, so a hang fails the test. Run it under ASan too
// (scripts/sanitize.sh). $KMQ_MUTATE_FILE adds another .kmq (e.g. the bundled model).
#include <doctest/doctest.h>

#include <csignal>
#include <cstring>
#include <fmt/format.h>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <unistd.h>

#include "convert/convert.h"
#include "format/layout.h"
#include "kmq/model.h"
#include "test_util.h"
#include "util/crc32c.h"

using namespace kmq;
using format::DirEntry;
using format::FileHeader;
using Bytes = std::vector<uint8_t>;

namespace {

Bytes read_bytes(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(f), {});
}

void write_bytes(const std::filesystem::path& p, const Bytes& b) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

FileHeader header_of(const Bytes& b) {
  FileHeader h{};
  std::memcpy(&h, b.data(), std::min(b.size(), sizeof h));
  return h;
}

// Recomputes the metadata, directory and header checksums where their regions lie inside
// the file (as the kmq_file fuzz target does).
void repair_checksums(Bytes& b) {
  if (b.size() < sizeof(FileHeader)) return;
  FileHeader h = header_of(b);
  const uint64_t n = b.size();
  if (h.meta_offset <= n && h.meta_size <= n - h.meta_offset) h.meta_crc = crc32c(&b[h.meta_offset], h.meta_size);
  if (h.dir_count <= n / sizeof(DirEntry) && h.dir_offset <= n && h.dir_count * sizeof(DirEntry) <= n - h.dir_offset)
    h.dir_crc = crc32c(&b[h.dir_offset], h.dir_count * sizeof(DirEntry));
  h.header_crc = 0;
  h.header_crc = crc32c(&h, sizeof h);
  std::memcpy(b.data(), &h, sizeof h);
}

// kRejected: KmqFile refused it; kDetected: it loaded and verify() named a tensor;
// kModelRejected: the file checks passed and Model::load refused it (names or shapes that
// do not match the config); kIntact: it loaded and ran.
enum class Outcome { kRejected, kDetected, kModelRejected, kIntact };

struct Result {
  Outcome outcome = Outcome::kIntact;
  std::string message;              // the error, when rejected
  std::vector<std::string> corrupt; // verify()'s answer, when it loaded
};

// Loads a variant the way the tools do. Any exception other than kmq::Error fails the test.
class Checker {
 public:
  explicit Checker(std::string tag) : path_(test::temp_path("mutant-" + tag + ".kmq")) {}

  Result run(const Bytes& b) {
    write_bytes(path_, b);
    Result r;
    ::alarm(60);  // a hang ends the process (SIGALRM) instead of stalling the suite
    try {
      KmqFile f(path_);
      check_bounds(f, b);
      r.corrupt = f.verify();
      r.outcome = r.corrupt.empty() ? Outcome::kIntact : Outcome::kDetected;
      try {
        auto m = Model::load(path_, ModelOptions{"cpu", 1});
        auto s = m->new_session(8);
        std::vector<float> logits;
        const int32_t bos = std::max<int32_t>(0, m->config().bos_id);
        s->eval({bos, int32_t(m->config().n_vocab - 1)}, &logits);
        CHECK(logits.size() == size_t(m->config().n_vocab));
        ++ran_;
      } catch (const Error& e) {
        check_names_file(e.what());
        if (r.outcome == Outcome::kIntact) {
          r.outcome = Outcome::kModelRejected;
          r.message = e.what();
        }
      }
    } catch (const Error& e) {
      r.outcome = Outcome::kRejected;
      r.message = e.what();
      check_names_file(r.message);
    } catch (const std::exception& e) {
      FAIL("not a kmq::Error: ", e.what());
    }
    ::alarm(0);
    ++counts_[r.outcome];
    return r;
  }

  void report(const std::string& what) const {
    MESSAGE(fmt::format("{}: {} rejected by the reader, {} caught by verify, {} refused by Model::load, {} intact; "
                        "{} ran two tokens",
                        what, count(Outcome::kRejected), count(Outcome::kDetected), count(Outcome::kModelRejected),
                        count(Outcome::kIntact), ran_));
  }
  int count(Outcome o) const { return counts_.count(o) ? counts_.at(o) : 0; }

 private:
  void check_names_file(const std::string& msg) {
    CAPTURE(msg);
    CHECK(msg.find(path_.filename().string()) != std::string::npos);
  }
  // Every tensor handed out lies inside the data section of the variant and its parts
  // inside its region.
  static void check_bounds(const KmqFile& f, const Bytes& b) {
    const FileHeader h = header_of(b);
    for (const auto& t : f.tensors()) {
      CAPTURE(t.name);
      CHECK(t.file_offset >= h.data_offset);
      CHECK(t.file_offset + t.file_size <= h.data_offset + h.data_size);
      CHECK(t.file_offset + t.file_size <= b.size());
      const auto* region = static_cast<const uint8_t*>(t.data);  // part 0 is the region's start
      for (const void* p : {t.codebooks, t.scales}) {
        if (!p) continue;
        CHECK(static_cast<const uint8_t*>(p) >= region);
        CHECK(static_cast<const uint8_t*>(p) <= region + t.file_size);
      }
    }
  }

  std::filesystem::path path_;
  std::map<Outcome, int> counts_;
  int ran_ = 0;
};

struct TensorSpan {
  std::string name;
  uint64_t begin, end;  // absolute file offsets of the region
};

std::vector<TensorSpan> tensor_spans(const Bytes& b) {
  const FileHeader h = header_of(b);
  std::vector<TensorSpan> v;
  for (uint64_t i = 0; i < h.dir_count; ++i) {
    DirEntry e;
    std::memcpy(&e, &b[h.dir_offset + i * sizeof e], sizeof e);
    v.push_back({e.name, h.data_offset + e.offset, h.data_offset + e.offset + e.size});
  }
  return v;
}

void mutate_all(const Bytes& good, const std::string& tag) {
  const FileHeader h = header_of(good);
  const auto spans = tensor_spans(good);
  REQUIRE(spans.size() >= 3);
  std::mt19937_64 rng(0x6b6d71 + good.size());
  auto pick = [&](uint64_t from, uint64_t to) { return from + rng() % (to - from); };
  const uint64_t meta_end = h.meta_offset + h.meta_size;
  const uint64_t dir_end = h.dir_offset + h.dir_count * sizeof(DirEntry);

  SUBCASE("truncation at every section and tensor boundary, and at random lengths") {
    Checker c(tag + "-trunc");
    std::vector<uint64_t> cuts = {0, 1, 8, 127, 128, 255, 256, h.meta_offset, h.meta_offset + 1, meta_end - 1,
                                  meta_end, h.dir_offset, dir_end - 1, h.file_size - 1};
    for (const auto& s : spans) {
      cuts.push_back(s.begin);
      cuts.push_back(s.begin + 1);
      cuts.push_back(s.end - 1);
      cuts.push_back(s.end);
    }
    for (uint64_t i = 0; i < h.dir_count; ++i) cuts.push_back(h.dir_offset + i * sizeof(DirEntry));
    for (int i = 0; i < 40; ++i) cuts.push_back(pick(0, h.file_size));
    for (uint64_t cut : cuts) {
      REQUIRE(cut < good.size());
      CAPTURE(cut);
      Result r = c.run(Bytes(good.begin(), good.begin() + int64_t(cut)));
      CHECK(r.outcome == Outcome::kRejected);
      CHECK((r.message.find("truncated") != std::string::npos || r.message.find("too small") != std::string::npos));
    }
    // A file extended by a block is refused the same way (file_size no longer matches).
    Bytes longer = good;
    longer.resize(good.size() + 256, 0);
    CHECK(c.run(longer).outcome == Outcome::kRejected);
    c.report(fmt::format("{}: {} truncations", tag, cuts.size()));
  }

  // The regions no payload checksum covers: the header and its padding, metadata and its
  // padding, the directory and the padding to the end of the file.
  struct Area {
    const char* name;
    uint64_t begin, end;
  };
  const std::vector<Area> areas = {{"header", 0, sizeof(FileHeader)},
                                   {"header padding", sizeof(FileHeader), h.data_offset},
                                   {"metadata", h.meta_offset, meta_end},
                                   {"metadata padding", meta_end, h.dir_offset},
                                   {"directory", h.dir_offset, dir_end},
                                   {"directory padding", dir_end, h.file_size}};

  SUBCASE("raw bit flips in header, metadata, directory and their padding are rejected") {
    Checker c(tag + "-flip");
    int n = 0;
    for (const auto& a : areas) {
      if (a.begin == a.end) continue;
      const int variants = a.end - a.begin > 256 ? 100 : 30;
      for (int i = 0; i < variants; ++i, ++n) {
        Bytes b = good;
        const uint64_t pos = pick(a.begin, a.end);
        const int bits = 1 + int(rng() % 3);  // 1 to 3 flipped bits, close together
        for (int k = 0; k < bits; ++k) b[std::min(pos + rng() % 4, a.end - 1)] ^= uint8_t(1u << (rng() % 8));
        if (b == good) continue;
        CAPTURE(a.name);
        CAPTURE(pos);
        Result r = c.run(b);
        CHECK_MESSAGE(r.outcome == Outcome::kRejected, "accepted: ", a.name, " flip at ", pos);
      }
    }
    c.report(fmt::format("{}: {} raw flips", tag, n));
  }

  SUBCASE("bit flips with repaired checksums reach the validation and never crash") {
    Checker c(tag + "-repaired");
    int n = 0, same = 0;
    for (const auto& a : areas) {
      if (a.begin == a.end) continue;
      const int variants = a.end - a.begin > 256 ? 150 : 40;
      for (int i = 0; i < variants; ++i) {
        Bytes b = good;
        const uint64_t pos = pick(a.begin, a.end);
        b[pos] ^= uint8_t(1u << (rng() % 8));
        if (rng() % 2) b[pick(a.begin, a.end)] ^= uint8_t(1u << (rng() % 8));
        repair_checksums(b);
        if (b == good) {  // a flip of a checksum field, undone by the repair
          ++same;
          continue;
        }
        ++n;
        CAPTURE(a.name);
        CAPTURE(pos);
        Result r = c.run(b);
        // Every header field and padding byte is validated: a changed byte there is refused.
        // A repaired directory or metadata flip can make another valid file (a scale block
        // of 33 instead of 32 over 64 columns needs the same bytes); it must not crash.
        const std::string area = a.name;
        if (area != "metadata" && area != "directory")
          CHECK_MESSAGE(r.outcome == Outcome::kRejected, "accepted: ", a.name, " flip at ", pos);
      }
    }
    c.report(fmt::format("{}: {} flips with repaired checksums ({} undone by the repair)", tag, n, same));
  }

  SUBCASE("payload bit flips load and are caught by verify, naming the tensor") {
    Checker c(tag + "-payload");
    int n = 0;
    for (int i = 0; i < 120; ++i, ++n) {
      Bytes b = good;
      // Most flips inside a tensor's region, some in the padding between regions.
      const auto& s = spans[rng() % spans.size()];
      const uint64_t next = &s == &spans.back() ? h.data_offset + h.data_size : (&s)[1].begin;
      const bool in_padding = i % 6 == 5 && next > s.end;
      const uint64_t pos = in_padding ? pick(s.end, next) : pick(s.begin, s.end);
      b[pos] ^= uint8_t(1u << (rng() % 8));
      CAPTURE(s.name);
      CAPTURE(pos);
      Result r = c.run(b);
      REQUIRE(r.outcome == Outcome::kDetected);
      CHECK(r.corrupt == std::vector<std::string>{s.name});
    }
    c.report(fmt::format("{}: {} payload flips", tag, n));
  }

  SUBCASE("directory offsets and sizes pointing past the end or overlapping") {
    Checker c(tag + "-offsets");
    int n = 0;
    auto with_entry = [&](size_t i, auto&& mutate) {
      Bytes b = good;
      DirEntry e;
      std::memcpy(&e, &b[h.dir_offset + i * sizeof e], sizeof e);
      mutate(e);
      std::memcpy(&b[h.dir_offset + i * sizeof e], &e, sizeof e);
      repair_checksums(b);
      if (b == good) return std::optional<Result>();  // the mutation changed nothing
      ++n;
      return std::optional<Result>(c.run(b));
    };
    auto expect = [&](const std::optional<Result>& res, std::initializer_list<const char*> any_of) {
      if (!res) return;
      const Result& r = *res;
      CAPTURE(r.message);
      CHECK(r.outcome == Outcome::kRejected);
      bool named = false;
      for (const char* w : any_of) named |= r.message.find(w) != std::string::npos;
      CHECK(named);
    };
    for (size_t i = 0; i < spans.size(); ++i) {
      CAPTURE(spans[i].name);
      const size_t other = (i + 1) % spans.size();
      DirEntry o;
      std::memcpy(&o, &good[h.dir_offset + other * sizeof o], sizeof o);
      const uint64_t data_size = h.data_size;
      auto shift = [](DirEntry& e, uint64_t to) {  // moves the region and its parts
        const uint64_t d = to - e.offset;
        e.offset = to;
        for (int k = 0; k < (e.dtype == uint8_t(DType::kKmq) ? 3 : 1); ++k) e.part_offset[k] += d;
      };
      expect(with_entry(i, [&](DirEntry& e) { shift(e, data_size); }), {"past the end"});
      expect(with_entry(i, [&](DirEntry& e) { shift(e, data_size - 256); }), {"past the end", "overlap"});
      expect(with_entry(i, [&](DirEntry& e) { shift(e, uint64_t(1) << 63); }), {"past the end"});
      expect(with_entry(i, [&](DirEntry& e) { e.size = ~uint64_t(0) - 100; }), {"past the end"});
      expect(with_entry(i, [&](DirEntry& e) { e.size += data_size; }), {"past the end"});
      expect(with_entry(i, [&](DirEntry& e) { shift(e, o.offset); }), {"overlap", "past the end"});
      expect(with_entry(i, [&](DirEntry& e) { e.size += 256 + (o.offset > e.offset ? o.offset - e.offset : 0); }),
             {"overlap", "past the end"});
      expect(with_entry(i, [&](DirEntry& e) { e.part_offset[0] = e.offset + e.size; }), {"outside"});
      expect(with_entry(i, [&](DirEntry& e) { e.part_offset[0] = ~uint64_t(0) - 8; }), {"outside"});
      expect(with_entry(i, [&](DirEntry& e) { e.part_size[0] += 64; }), {"needs"});
      expect(with_entry(i, [&](DirEntry& e) { e.offset += 1; }), {"aligned", "outside"});
    }
    // The header's section offsets.
    auto with_header = [&](auto&& mutate) {
      Bytes b = good;
      FileHeader hh = h;
      mutate(hh);
      std::memcpy(b.data(), &hh, sizeof hh);
      repair_checksums(b);
      ++n;
      return std::optional<Result>(c.run(b));
    };
    const uint64_t fs = h.file_size;
    expect(with_header([&](FileHeader& x) { x.data_size = fs; }), {"outside"});
    expect(with_header([&](FileHeader& x) { x.data_size = ~uint64_t(0) - 10; }), {"outside"});
    expect(with_header([&](FileHeader& x) { x.data_size -= 256; }), {"follow", "past the end"});
    expect(with_header([&](FileHeader& x) { x.meta_offset = fs; }), {"outside"});
    expect(with_header([&](FileHeader& x) { x.meta_offset = 256; }), {"overlaps"});
    expect(with_header([&](FileHeader& x) { x.meta_size = fs; }), {"outside"});
    expect(with_header([&](FileHeader& x) { x.meta_size = ~uint64_t(0); }), {"outside", "too large"});
    expect(with_header([&](FileHeader& x) { x.dir_offset = fs; }), {"outside"});
    expect(with_header([&](FileHeader& x) { x.dir_offset = x.meta_offset; }), {"outside"});
    expect(with_header([&](FileHeader& x) { x.dir_count += 1; }), {"outside"});
    expect(with_header([&](FileHeader& x) { x.dir_count = uint64_t(1) << 58; }), {"outside"});
    expect(with_header([&](FileHeader& x) { x.dir_count -= 1; }), {"padding"});
    expect(with_header([&](FileHeader& x) { x.file_size = fs + 256; }), {"truncated"});
    expect(with_header([&](FileHeader& x) { x.data_offset = 0; }), {"outside"});
    c.report(fmt::format("{}: {} offset and size mutations", tag, n));
  }
}

std::filesystem::path stories_kmq() {
  static std::filesystem::path path;
  if (!path.empty()) return path;
  const auto d = test::shared_dir() / "models/stories260K";
  path = test::temp_path("mutate-stories260K.kmq");
  std::filesystem::remove(path);
  ConvertOptions o;
  o.quant.bits = 3;
  o.quant.scope = CodebookScope::kGroup;
  o.quant.group_size = 32;
  o.quant.scale_block = 32;
  o.quant.codebook_dtype = DType::kF16;
  o.quant.scale_dtype = DType::kBF16;
  o.embed_type = "f16";  // float tensors of two widths beside the quantized ones
  convert_model(open_llama2c(d / "stories260K.bin", d / "tok512.bin"), path, o);
  return path;
}

}  // namespace

TEST_CASE("kmq mutations: stories260K at 3 bits, group scope") {
  if (!test::have_shared("models/stories260K/stories260K.bin")) return;
  const Bytes good = read_bytes(stories_kmq());
  {
    Checker c("stories-good");
    REQUIRE(c.run(good).outcome == Outcome::kIntact);
  }
  mutate_all(good, "stories260K");
}

TEST_CASE("kmq mutations: $KMQ_MUTATE_FILE") {
  const char* f = std::getenv("KMQ_MUTATE_FILE");
  if (!f || !*f) return;
  const Bytes good = read_bytes(f);
  REQUIRE(good.size() >= 256);
  mutate_all(good, std::filesystem::path(f).stem().string());
}
