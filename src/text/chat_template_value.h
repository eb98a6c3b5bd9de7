// Chat-template value helpers (chat_template_value.cpp): Python-compatible printing,
// tojson, truthiness, equality and ordering of kmq::chat::Value.
#pragma once
#include <string>

#include "text/chat_template_ast.h"

namespace kmq::chat {

std::string py_float(double d);                     // Python repr of a float
std::string py_str(const Value& v, bool repr = false);  // str(v) (repr(v) for strings)
std::string to_json(const Value& v, int indent);    // json.dumps(ensure_ascii=False); indent < 0: none
bool truthy(const Value& v);
bool is_number(const Value& v);                     // int, float or bool (Python's bool is an int)
double as_double(const Value& v);
int64_t as_int(const Value& v);
bool equal(const Value& a, const Value& b, int depth = 0);
// -1/0/1 for numbers or strings; throws kmq::Error (naming `op`) for other types.
int compare_order(const Value& a, const Value& b, const std::string& op);
const Value* dict_find(const Dict& d, const std::string& key);
const char* type_name(const Value& v);

}  // namespace kmq::chat
