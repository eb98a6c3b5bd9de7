// kmq::Error: the one exception type of the library. Its message names the file, the
// object and the problem ("model.kmq: tensor 'blk.0.attn_q': offset 123 past end of file").
#pragma once
#include <stdexcept>
#include <string>

namespace kmq {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace kmq
