// ModelConfig <-> JSON, the "config" object of a .kmq file's metadata.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "kmq/config.h"

namespace kmq {

nlohmann::json config_to_json_object(const ModelConfig& c);
// Reads and validates (validate_config); errors are prefixed by `where`.
ModelConfig config_from_json_object(const nlohmann::json& j, const std::string& where);

}  // namespace kmq
