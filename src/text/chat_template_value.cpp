// Chat-template values: Python's str()/repr() of values, json.dumps as transformers'
// tojson filter calls it, truthiness, equality and ordering.
#include <fmt/format.h>

#include <charconv>
#include <cmath>

#include "kmq/error.h"
#include "text/chat_template_value.h"

namespace kmq::chat {

std::string py_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  // Shortest round-trip digits, laid out like Python's repr (fixed for 1e-4 <= |d| < 1e16).
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  const size_t e = sci.find('e');
  std::string mant = sci.substr(0, e);
  const int exp = std::stoi(sci.substr(e + 1));
  const bool neg = mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant)
    if (c != '.') digits += c;
  std::string out;
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out = "0." + std::string(size_t(-exp - 1), '0') + digits;
    } else if (size_t(exp) + 1 >= digits.size()) {
      out = digits + std::string(size_t(exp) + 1 - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, size_t(exp) + 1) + "." + digits.substr(size_t(exp) + 1);
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) {  // appended piecewise: GCC 12 warns (-Wrestrict, falsely) on "." + substr
      out += '.';
      out.append(digits, 1);
    }
    out += fmt::format("e{}{:02d}", exp < 0 ? '-' : '+', std::abs(exp));
  }
  return neg ? "-" + out : out;
}

namespace {

std::string py_repr_string(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == q || c == '\\') out += '\\', out += char(c);
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) out += fmt::format("\\x{:02x}", c);
    else out += char(c);
  }
  return out + q;
}

}  // namespace

std::string py_str(const Value& v, bool repr) {
  switch (v.kind) {
    case Value::Kind::kUndefined: return "";
    case Value::Kind::kNone: return "None";
    case Value::Kind::kBool: return v.b ? "True" : "False";
    case Value::Kind::kInt: return std::to_string(v.i);
    case Value::Kind::kFloat: return py_float(v.f);
    case Value::Kind::kString: return repr ? py_repr_string(v.s) : v.s;
    case Value::Kind::kList: {
      std::string out = "[";
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += ", ";
        out += py_str((*v.list)[k], true);
        if (out.size() > kMaxOutput) throw Error("chat template: value too large to print");
      }
      return out + "]";
    }
    case Value::Kind::kDict:
    case Value::Kind::kNamespace: {
      std::string out = v.is(Value::Kind::kNamespace) ? "<Namespace {" : "{";
      for (size_t k = 0; k < v.dict->size(); ++k) {
        if (k) out += ", ";
        out += py_repr_string((*v.dict)[k].first) + ": " + py_str((*v.dict)[k].second, true);
        if (out.size() > kMaxOutput) throw Error("chat template: value too large to print");
      }
      return out + (v.is(Value::Kind::kNamespace) ? "}>" : "}");
    }
  }
  return "";
}

namespace {

void json_string(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) out += fmt::format("\\u{:04x}", c);
        else out += char(c);
    }
  }
  out += '"';
}

void json_dump(std::string& out, const Value& v, int indent, int level, int depth) {
  if (depth > 2 * kMaxNesting) throw Error("chat template: tojson: value nested too deeply");
  if (out.size() > kMaxOutput) throw Error("chat template: tojson: output too large");
  const auto newline = [&](int lvl) {
    out += '\n';
    out.append(size_t(indent) * size_t(lvl), ' ');
  };
  switch (v.kind) {
    case Value::Kind::kUndefined: throw Error("chat template: tojson: value is undefined");
    case Value::Kind::kNone: out += "null"; return;
    case Value::Kind::kBool: out += v.b ? "true" : "false"; return;
    case Value::Kind::kInt: out += std::to_string(v.i); return;
    case Value::Kind::kFloat:
      out += std::isnan(v.f) ? "NaN" : std::isinf(v.f) ? (v.f < 0 ? "-Infinity" : "Infinity") : py_float(v.f);
      return;
    case Value::Kind::kString: json_string(out, v.s); return;
    case Value::Kind::kList: {
      if (v.list->empty()) { out += "[]"; return; }
      out += '[';
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += indent >= 0 ? "," : ", ";
        if (indent >= 0) newline(level + 1);
        json_dump(out, (*v.list)[k], indent, level + 1, depth + 1);
      }
      if (indent >= 0) newline(level);
      out += ']';
      return;
    }
    case Value::Kind::kDict:
    case Value::Kind::kNamespace: {
      if (v.dict->empty()) { out += "{}"; return; }
      out += '{';
      for (size_t k = 0; k < v.dict->size(); ++k) {
        if (k) out += indent >= 0 ? "," : ", ";
        if (indent >= 0) newline(level + 1);
        json_string(out, (*v.dict)[k].first);
        out += ": ";
        json_dump(out, (*v.dict)[k].second, indent, level + 1, depth + 1);
      }
      if (indent >= 0) newline(level);
      out += '}';
      return;
    }
  }
}

}  // namespace

std::string to_json(const Value& v, int indent) {
  std::string out;
  json_dump(out, v, indent, 0, 0);
  return out;
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone: return false;
    case Value::Kind::kBool: return v.b;
    case Value::Kind::kInt: return v.i != 0;
    case Value::Kind::kFloat: return v.f != 0;
    case Value::Kind::kString: return !v.s.empty();
    case Value::Kind::kList: return !v.list->empty();
    case Value::Kind::kDict: return !v.dict->empty();
    case Value::Kind::kNamespace: return true;
  }
  return false;
}

bool is_number(const Value& v) {
  return v.is(Value::Kind::kInt) || v.is(Value::Kind::kFloat) || v.is(Value::Kind::kBool);
}
double as_double(const Value& v) {
  return v.is(Value::Kind::kFloat) ? v.f : v.is(Value::Kind::kBool) ? double(v.b) : double(v.i);
}
int64_t as_int(const Value& v) { return v.is(Value::Kind::kBool) ? int64_t(v.b) : v.i; }

bool equal(const Value& a, const Value& b, int depth) {
  if (depth > 2 * kMaxNesting) throw Error("chat template: comparison nested too deeply");
  if (is_number(a) && is_number(b)) {
    if (a.is(Value::Kind::kFloat) || b.is(Value::Kind::kFloat)) return as_double(a) == as_double(b);
    return as_int(a) == as_int(b);
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone: return true;
    case Value::Kind::kString: return a.s == b.s;
    case Value::Kind::kList:
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equal((*a.list)[k], (*b.list)[k], depth + 1)) return false;
      return true;
    case Value::Kind::kDict: {
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [key, val] : *a.dict) {
        const Value* other = dict_find(*b.dict, key);
        if (!other || !equal(val, *other, depth + 1)) return false;
      }
      return true;
    }
    case Value::Kind::kNamespace: return a.dict == b.dict;
    default: return false;
  }
}

int compare_order(const Value& a, const Value& b, const std::string& op) {
  if (is_number(a) && is_number(b)) {
    const double x = as_double(a), y = as_double(b);
    if (!a.is(Value::Kind::kFloat) && !b.is(Value::Kind::kFloat))
      return as_int(a) < as_int(b) ? -1 : as_int(a) > as_int(b) ? 1 : 0;
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is(Value::Kind::kString) && b.is(Value::Kind::kString)) return a.s.compare(b.s) < 0 ? -1 : a.s == b.s ? 0 : 1;
  throw Error(fmt::format("chat template: '{}' not supported between {} and {}", op, type_name(a),
                          type_name(b)));
}

const Value* dict_find(const Dict& d, const std::string& key) {
  for (const auto& kv : d)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

const char* type_name(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined: return "undefined";
    case Value::Kind::kNone: return "NoneType";
    case Value::Kind::kBool: return "bool";
    case Value::Kind::kInt: return "int";
    case Value::Kind::kFloat: return "float";
    case Value::Kind::kString: return "str";
    case Value::Kind::kList: return "list";
    case Value::Kind::kDict: return "dict";
    case Value::Kind::kNamespace: return "Namespace";
  }
  return "?";
}

}  // namespace kmq::chat
