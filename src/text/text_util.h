// Byte-string helpers shared by the tokenizer sources: UTF-8 validation, base64, the GPT-2
// byte<->unicode mapping and SentencePiece byte-piece names ("<0x41>").
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kmq::text {

// Length (1..4) of the valid UTF-8 sequence starting at s[i], or 0 when the bytes there
// are not a valid sequence (bad lead, truncated, overlong, surrogate, > U+10FFFF).
size_t utf8_seq_len(std::string_view s, size_t i);
bool is_valid_utf8(std::string_view s);
void append_utf8(std::string& out, uint32_t cp);

std::string base64_encode(std::string_view bytes);
// Standard alphabet with '=' padding; false on any invalid character or length.
bool base64_decode(std::string_view b64, std::string& out);

// GPT-2 byte-level mapping: each byte 0..255 is shown as one printable code point
// (printable Latin-1 bytes map to themselves, the other 68 to U+0100..U+0143).
const std::array<std::string, 256>& gpt2_byte_to_unicode();
// Inverse mapping of a whole string; false if some character is not in the mapping.
bool gpt2_unicode_to_bytes(std::string_view mapped, std::string& out);

// "<0x41>" -> 0x41; -1 when `piece` is not exactly of that form (two uppercase or
// lowercase hex digits).
int parse_byte_piece(std::string_view piece);
std::string byte_piece_name(uint8_t b);

}  // namespace kmq::text
