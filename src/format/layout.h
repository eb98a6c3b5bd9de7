// The on-disk structs of a .kmq file, version 1. docs/FORMAT.md is the specification;
// every field here is little-endian and the sizes are fixed (static_assert below).
//
//   [0, 256)                 FileHeader (128 bytes) + zero padding
//   [data_offset, +data_size) tensor payloads; each tensor starts at a multiple of 256,
//                            each of its parts (indices / codebooks / scales) at a multiple of 64
//   [meta_offset, +meta_size) metadata: UTF-8 JSON (config, tokenizer, chat template, notes)
//   [dir_offset, +dir_count*256) DirEntry[dir_count]
//   file_size = dir_offset + dir_count*256, padded to a multiple of 256
#pragma once
#include <cstddef>
#include <cstdint>

namespace kmq::format {

inline constexpr char kMagic[8] = {'K', 'M', 'Q', 'M', 'O', 'D', 'E', 'L'};
inline constexpr uint32_t kVersion = 1;
inline constexpr uint64_t kAlign = 256;      // tensor and section alignment
inline constexpr uint64_t kPartAlign = 64;   // alignment of parts inside a tensor
inline constexpr size_t kNameLen = 96;       // DirEntry::name, NUL-terminated
inline constexpr uint64_t kMaxMetaSize = uint64_t(1) << 30;
inline constexpr uint64_t kMaxTensors = 1u << 20;

struct FileHeader {
  char magic[8];          // kMagic
  uint32_t version;       // kVersion
  uint32_t header_size;   // sizeof(FileHeader)
  uint64_t file_size;     // total bytes, must equal the file's size
  uint64_t data_offset;   // start of tensor payloads (multiple of kAlign)
  uint64_t data_size;
  uint64_t meta_offset;   // JSON metadata
  uint64_t meta_size;
  uint64_t dir_offset;    // tensor directory
  uint64_t dir_count;     // number of DirEntry records
  uint32_t alignment;     // kAlign
  uint32_t meta_crc;      // crc32c of the metadata bytes
  uint32_t dir_crc;       // crc32c of the directory bytes
  uint32_t header_crc;    // crc32c of this struct with header_crc = 0
  uint8_t reserved[40];   // zero
};
static_assert(sizeof(FileHeader) == 128);
static_assert(offsetof(FileHeader, header_crc) == 84);

// One tensor. For float tensors (dtype f32/f16/bf16) only part 0 is used (the values,
// row-major). For kmq tensors: part 0 = packed indices (rows * ceil(cols*bits/8) bytes),
// part 1 = codebooks (n_codebooks * 2^bits values of codebook_dtype), part 2 = scales
// (rows * ceil(cols/scale_block) values of scale_dtype; size 0 when scale_block = 0).
// Part offsets are relative to data_offset and lie inside [offset, offset + size).
struct DirEntry {
  char name[kNameLen];     // NUL-terminated, NUL-padded
  uint8_t dtype;           // kmq::DType
  uint8_t bits;            // 1..4 for kmq tensors, 0 otherwise
  uint8_t scope;           // kmq::CodebookScope (kmq tensors)
  uint8_t codebook_dtype;  // kmq::DType (f32 or f16)
  uint8_t scale_dtype;     // kmq::DType (f16 or bf16)
  uint8_t ndim;            // 1 or 2
  uint8_t reserved0[2];
  int64_t shape[2];        // [rows, cols]; a vector is [n, 1] with ndim = 1
  int64_t group_size;      // weights per codebook for scope = group, else 0
  int64_t scale_block;     // weights per scale along a row, 0 = no scales
  uint64_t offset;         // the tensor's region, relative to data_offset (multiple of kAlign)
  uint64_t size;
  uint64_t part_offset[3];
  uint64_t part_size[3];
  uint32_t crc;            // crc32c of the region [offset, offset + size)
  uint8_t reserved[52];
};
static_assert(sizeof(DirEntry) == 256);
static_assert(offsetof(DirEntry, crc) == 200);

}  // namespace kmq::format
