// Chat-template evaluator: runs the syntax tree of chat_template_ast.h over the messages
// with jinja2's semantics (Python values, undefined values, loop scoping), within the
// output, step and size bounds of chat_template_ast.h.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <unordered_map>

#include "kmq/error.h"
#include "text/chat_template_ast.h"
#include "text/chat_template_value.h"

namespace kmq::chat {
namespace {

using K = Value::Kind;

// Byte offsets of the code points of a UTF-8 string (invalid bytes count as one each),
// plus the end offset.
std::vector<size_t> code_points(const std::string& s) {
  std::vector<size_t> at;
  for (size_t k = 0; k < s.size();) {
    at.push_back(k);
    const unsigned char c = s[k];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    for (size_t j = 1; j < n; ++j)
      if (k + j >= s.size() || (static_cast<unsigned char>(s[k + j]) >> 6) != 2) n = 1;
    k += n;
  }
  at.push_back(s.size());
  return at;
}

bool py_space(unsigned char c) { return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f); }

std::string strip(const std::string& s, bool left, bool right, const Value* chars = nullptr) {
  const auto drop = [&](unsigned char c) {
    return chars ? chars->s.find(char(c)) != std::string::npos : py_space(c);
  };
  size_t a = 0, b = s.size();
  if (left) while (a < b && drop(s[a])) ++a;
  if (right) while (b > a && drop(s[b - 1])) --b;
  return s.substr(a, b - a);
}

std::string ascii_case(std::string s, bool upper) {
  for (char& c : s) c = upper ? char(std::toupper(static_cast<unsigned char>(c)))
                              : char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Python's str.title(): a letter after a non-letter is upper case, others lower case.
std::string py_title(const std::string& s) {
  std::string out = s;
  bool prev_letter = false;
  for (char& c : out) {
    const unsigned char u = c;
    if (u < 0x80 && std::isalpha(u)) {
      c = prev_letter ? char(std::tolower(u)) : char(std::toupper(u));
      prev_letter = true;
    } else {
      prev_letter = u >= 0x80;
    }
  }
  return out;
}
// jinja2's title filter: words start after '-', whitespace, '(', '{', '[' or '<'.
std::string jinja_title(const std::string& s) {
  std::string out = s;
  bool start = true;
  for (char& c : out) {
    const unsigned char u = c;
    const bool sep = py_space(u) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
    if (sep) { start = true; continue; }
    c = start ? char(std::toupper(u)) : char(std::tolower(u));
    start = false;
  }
  return out;
}

enum class Flow { kNormal, kBreak, kContinue };

class Renderer {
 public:
  Renderer(const std::vector<ChatMessage>& messages, const ChatTemplateOptions& opt) {
    auto& g = scopes_.emplace_back();
    List msgs;
    for (const auto& m : messages)
      msgs.push_back(Value::of_dict({{"role", Value::string(m.role)}, {"content", Value::string(m.content)}}));
    g["messages"] = Value::of_list(std::move(msgs));
    g["bos_token"] = Value::string(opt.bos_token);
    g["eos_token"] = Value::string(opt.eos_token);
    g["add_generation_prompt"] = Value::boolean(opt.add_generation_prompt);
    if (!opt.date_string.empty()) g["date_string"] = Value::string(opt.date_string);
  }

  std::string run(const Program& p) {
    exec(p.body);
    return std::move(out_);
  }

 private:
  [[noreturn]] static void fail(const Expr& e, const std::string& msg) {
    throw Error(fmt::format("chat template: line {}, column {}: {}", e.line, e.col, msg));
  }
  void step(int line) {
    if (++steps_ > kMaxSteps)
      throw Error(fmt::format("chat template: line {}: more than {} steps", line, kMaxSteps));
  }
  void emit(const std::string& s) {
    if (out_.size() + s.size() > kMaxOutput)
      throw Error(fmt::format("chat template: output larger than {} bytes", kMaxOutput));
    out_ += s;
  }
  static void check_size(const Expr& e, size_t n) {
    if (n > kMaxOutput) fail(e, fmt::format("string longer than {} bytes", kMaxOutput));
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    return Value::undefined("'" + name + "' is undefined");
  }

  Flow exec(const std::vector<Stmt>& body) {
    for (const Stmt& st : body) {
      step(st.line);
      switch (st.kind) {
        case StmtKind::kText: emit(st.text); break;
        case StmtKind::kOutput: emit(py_str(eval(*st.expr))); break;
        case StmtKind::kIf: {
          const Flow f = exec(truthy(eval(*st.expr)) ? st.body : st.else_body);
          if (f != Flow::kNormal) return f;
          break;
        }
        case StmtKind::kFor: exec_for(st); break;
        case StmtKind::kSet: exec_set(st); break;
        case StmtKind::kBreak: return Flow::kBreak;
        case StmtKind::kContinue: return Flow::kContinue;
        case StmtKind::kBlock: {
          const Flow f = exec(st.body);
          if (f != Flow::kNormal) return f;
          break;
        }
      }
    }
    return Flow::kNormal;
  }

  void exec_set(const Stmt& st) {
    Value v = eval(*st.expr);
    if (st.targets.size() == 1) {
      scopes_.back()[st.targets[0]] = std::move(v);
      return;
    }
    Value ns = lookup(st.targets[0]);
    if (!ns.is(K::kNamespace)) fail(*st.expr, "can only set attributes of a namespace()");
    for (auto& kv : *ns.dict)
      if (kv.first == st.targets[1]) {
        kv.second = std::move(v);
        return;
      }
    ns.dict->emplace_back(st.targets[1], std::move(v));
  }

  void bind(std::unordered_map<std::string, Value>& scope, const Stmt& st, const Value& item) {
    if (st.targets.size() == 1) {
      scope[st.targets[0]] = item;
      return;
    }
    if (!item.is(K::kList) || item.list->size() != st.targets.size())
      fail(*st.expr, fmt::format("cannot unpack {} into {} names", type_name(item), st.targets.size()));
    for (size_t k = 0; k < st.targets.size(); ++k) scope[st.targets[k]] = (*item.list)[k];
  }

  void exec_for(const Stmt& st) {
    const Value seq = eval(*st.expr);
    List items = iterate(*st.expr, seq);
    if (st.filter) {
      List kept;
      for (auto& it : items) {
        step(st.line);
        auto& scope = scopes_.emplace_back();
        bind(scope, st, it);
        const bool keep = truthy(eval(*st.filter));
        scopes_.pop_back();
        if (keep) kept.push_back(std::move(it));
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      exec(st.else_body);
      return;
    }
    const int64_t n = int64_t(items.size());
    for (int64_t k = 0; k < n; ++k) {
      step(st.line);
      auto& scope = scopes_.emplace_back();  // a fresh scope per iteration, as in jinja2
      bind(scope, st, items[size_t(k)]);
      scope["loop"] = Value::of_dict({
          {"index", Value::integer(k + 1)},
          {"index0", Value::integer(k)},
          {"revindex", Value::integer(n - k)},
          {"revindex0", Value::integer(n - k - 1)},
          {"first", Value::boolean(k == 0)},
          {"last", Value::boolean(k == n - 1)},
          {"length", Value::integer(n)},
          {"previtem", k > 0 ? items[size_t(k - 1)] : Value::undefined("no previous item")},
          {"nextitem", k + 1 < n ? items[size_t(k + 1)] : Value::undefined("no next item")},
      });
      const Flow f = exec(st.body);
      scopes_.pop_back();
      if (f == Flow::kBreak) break;
    }
  }

  // The items a for loop or filter walks: list items, dict keys, string characters.
  List iterate(const Expr& e, const Value& v) {
    switch (v.kind) {
      case K::kUndefined: return {};
      case K::kList: return *v.list;
      case K::kDict: {
        List keys;
        for (const auto& kv : *v.dict) keys.push_back(Value::string(kv.first));
        return keys;
      }
      case K::kString: {
        const auto at = code_points(v.s);
        List chars;
        for (size_t k = 0; k + 1 < at.size(); ++k) chars.push_back(Value::string(v.s.substr(at[k], at[k + 1] - at[k])));
        return chars;
      }
      default: fail(e, fmt::format("'{}' object is not iterable", type_name(v)));
    }
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case ExprKind::kLiteral: return e.value;
      case ExprKind::kName: return lookup(e.name);
      case ExprKind::kList: {
        List l;
        for (const auto& a : e.args) l.push_back(eval(*a));
        return Value::of_list(std::move(l));
      }
      case ExprKind::kDict: {
        Dict d;
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          Value key = eval(*e.args[k]);
          if (!key.is(K::kString)) fail(e, "dict keys must be strings");
          Value val = eval(*e.args[k + 1]);
          bool found = false;
          for (auto& kv : d)
            if (kv.first == key.s) kv.second = val, found = true;
          if (!found) d.emplace_back(key.s, std::move(val));
        }
        return Value::of_dict(std::move(d));
      }
      case ExprKind::kAttr: return get_attr(e, eval(*e.args[0]), e.name);
      case ExprKind::kItem: {
        const Value obj = eval(*e.args[0]);
        const Value key = eval(*e.args[1]);
        return get_item(e, obj, key);
      }
      case ExprKind::kSlice: return slice(e);
      case ExprKind::kCall: return call_global(e);
      case ExprKind::kMethod: return call_method(e);
      case ExprKind::kFilter: return apply_filter(e);
      case ExprKind::kTest: return Value::boolean(run_test(e) != e.negate);
      case ExprKind::kUnary: {
        const Value v = eval(*e.args[0]);
        if (e.name == "not") return Value::boolean(!truthy(v));
        if (!is_number(v)) fail(e, fmt::format("bad operand type for unary {}: '{}'", e.name, type_name(v)));
        if (e.name == "+") return v.is(K::kBool) ? Value::integer(as_int(v)) : v;
        if (v.is(K::kFloat)) return Value::number(-v.f);
        return Value::integer(-as_int(v));
      }
      case ExprKind::kAnd: {
        Value a = eval(*e.args[0]);
        return truthy(a) ? eval(*e.args[1]) : a;
      }
      case ExprKind::kOr: {
        Value a = eval(*e.args[0]);
        return truthy(a) ? a : eval(*e.args[1]);
      }
      case ExprKind::kCompare: {
        Value left = eval(*e.args[0]);
        for (size_t k = 0; k < e.ops.size(); ++k) {
          Value right = eval(*e.args[k + 1]);
          if (!compare(e, e.ops[k], left, right)) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case ExprKind::kCond:
        if (truthy(eval(*e.args[1]))) return eval(*e.args[0]);
        return e.args[2] ? eval(*e.args[2]) : Value::undefined("conditional expression had no else");
      case ExprKind::kBinary: return binary(e, eval(*e.args[0]), eval(*e.args[1]));
    }
    fail(e, "unsupported expression");
  }

  static void require_defined(const Expr& e, const Value& v) {
    if (v.is(K::kUndefined)) fail(e, v.s);
  }

  Value get_attr(const Expr& e, const Value& obj, const std::string& name) {
    require_defined(e, obj);
    if (obj.is(K::kDict) || obj.is(K::kNamespace)) {
      if (const Value* v = dict_find(*obj.dict, name)) return *v;
      return Value::undefined(fmt::format("'dict object' has no attribute '{}'", name));
    }
    return Value::undefined(fmt::format("'{} object' has no attribute '{}'", type_name(obj), name));
  }

  Value get_item(const Expr& e, const Value& obj, const Value& key) {
    require_defined(e, obj);
    if ((obj.is(K::kDict) || obj.is(K::kNamespace))) {
      if (key.is(K::kString))
        if (const Value* v = dict_find(*obj.dict, key.s)) return *v;
      return Value::undefined(fmt::format("'dict object' has no attribute '{}'", py_str(key)));
    }
    if ((obj.is(K::kList) || obj.is(K::kString)) && (key.is(K::kInt) || key.is(K::kBool))) {
      const std::vector<size_t> at = obj.is(K::kString) ? code_points(obj.s) : std::vector<size_t>{};
      const int64_t n = obj.is(K::kList) ? int64_t(obj.list->size()) : int64_t(at.size()) - 1;
      int64_t k = as_int(key);
      if (k < 0) k += n;
      if (k < 0 || k >= n)
        return Value::undefined(fmt::format("{} object has no element {}", type_name(obj), as_int(key)));
      if (obj.is(K::kList)) return (*obj.list)[size_t(k)];
      return Value::string(obj.s.substr(at[size_t(k)], at[size_t(k) + 1] - at[size_t(k)]));
    }
    if (key.is(K::kString)) return get_attr(e, obj, key.s);
    return Value::undefined(fmt::format("'{} object' has no element {}", type_name(obj), py_str(key)));
  }

  Value slice(const Expr& e) {
    const Value obj = eval(*e.args[0]);
    require_defined(e, obj);
    if (!obj.is(K::kList) && !obj.is(K::kString)) fail(e, fmt::format("'{}' object is not subscriptable", type_name(obj)));
    int64_t parts[3] = {0, 0, 1};
    bool given[3] = {false, false, false};
    for (int k = 0; k < 3; ++k) {
      if (!e.args[size_t(k) + 1]) continue;
      const Value v = eval(*e.args[size_t(k) + 1]);
      if (v.is(K::kNone)) continue;
      if (!v.is(K::kInt) && !v.is(K::kBool)) fail(e, "slice indices must be integers");
      parts[k] = as_int(v), given[k] = true;
    }
    const int64_t step = parts[2];
    if (step == 0) fail(e, "slice step cannot be zero");
    const std::vector<size_t> at = obj.is(K::kString) ? code_points(obj.s) : std::vector<size_t>{};
    const int64_t n = obj.is(K::kList) ? int64_t(obj.list->size()) : int64_t(at.size()) - 1;
    // Python's slice.indices().
    const auto clamp = [&](int64_t v, bool has, int64_t dflt) {
      if (!has) return dflt;
      if (v < 0) v += n;
      if (step > 0) return std::clamp<int64_t>(v, 0, n);
      return std::clamp<int64_t>(v, -1, n - 1);
    };
    const int64_t start = clamp(parts[0], given[0], step > 0 ? 0 : n - 1);
    const int64_t stop = clamp(parts[1], given[1], step > 0 ? n : -1);
    List l;
    std::string s;
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
      if (obj.is(K::kList)) l.push_back((*obj.list)[size_t(k)]);
      else s.append(obj.s, at[size_t(k)], at[size_t(k) + 1] - at[size_t(k)]);
    }
    return obj.is(K::kList) ? Value::of_list(std::move(l)) : Value::string(std::move(s));
  }

  bool compare(const Expr& e, const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return equal(a, b);
    if (op == "!=") return !equal(a, b);
    if (op == "in" || op == "not in") return contains(e, b, a) == (op == "in");
    int c = 0;
    try {
      c = compare_order(a, b, op);
    } catch (const Error& err) {
      fail(e, std::string(err.what()).substr(15));
    }
    if (op == "<") return c < 0;
    if (op == "<=") return c <= 0;
    if (op == ">") return c > 0;
    return c >= 0;
  }

  bool contains(const Expr& e, const Value& container, const Value& item) {
    switch (container.kind) {
      case K::kString:
        if (!item.is(K::kString)) fail(e, "'in <string>' requires string as left operand");
        return container.s.find(item.s) != std::string::npos;
      case K::kList:
        for (const auto& v : *container.list)
          if (equal(v, item)) return true;
        return false;
      case K::kDict:
      case K::kNamespace:
        return item.is(K::kString) && dict_find(*container.dict, item.s);
      case K::kUndefined: fail(e, container.s);
      default: fail(e, fmt::format("argument of type '{}' is not iterable", type_name(container)));
    }
  }

  Value binary(const Expr& e, const Value& a, const Value& b) {
    const std::string& op = e.name;
    if (op == "~") {
      std::string s = py_str(a) + py_str(b);
      check_size(e, s.size());
      return Value::string(std::move(s));
    }
    require_defined(e, a);
    require_defined(e, b);
    if (op == "+") {
      if (a.is(K::kString) && b.is(K::kString)) {
        check_size(e, a.s.size() + b.s.size());
        return Value::string(a.s + b.s);
      }
      if (a.is(K::kList) && b.is(K::kList)) {
        if (a.list->size() + b.list->size() > kMaxListItems) fail(e, "list too long");
        List l = *a.list;
        l.insert(l.end(), b.list->begin(), b.list->end());
        return Value::of_list(std::move(l));
      }
    }
    if (op == "*") {
      const Value* seq = a.is(K::kString) || a.is(K::kList) ? &a : b.is(K::kString) || b.is(K::kList) ? &b : nullptr;
      const Value* count = seq == &a ? &b : &a;
      if (seq && (count->is(K::kInt) || count->is(K::kBool))) {
        const int64_t n = std::max<int64_t>(0, as_int(*count));
        if (seq->is(K::kString)) {
          if (n > 0 && seq->s.size() > kMaxOutput / size_t(n)) fail(e, "string too long");
          std::string s;
          for (int64_t k = 0; k < n; ++k) s += seq->s;
          return Value::string(std::move(s));
        }
        if (n > 0 && seq->list->size() > kMaxListItems / size_t(n)) fail(e, "list too long");
        List l;
        for (int64_t k = 0; k < n; ++k) l.insert(l.end(), seq->list->begin(), seq->list->end());
        return Value::of_list(std::move(l));
      }
    }
    if (!is_number(a) || !is_number(b))
      fail(e, fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a), type_name(b)));
    const bool ints = !a.is(K::kFloat) && !b.is(K::kFloat);
    const double x = as_double(a), y = as_double(b);
    const int64_t i = as_int(a), j = as_int(b);
    if (op == "/") {
      if (y == 0) fail(e, "division by zero");
      return Value::number(x / y);
    }
    if (ints) {
      int64_t r = 0;
      if (op == "+") { if (__builtin_add_overflow(i, j, &r)) fail(e, "integer overflow"); return Value::integer(r); }
      if (op == "-") { if (__builtin_sub_overflow(i, j, &r)) fail(e, "integer overflow"); return Value::integer(r); }
      if (op == "*") { if (__builtin_mul_overflow(i, j, &r)) fail(e, "integer overflow"); return Value::integer(r); }
      if (op == "//" || op == "%") {
        if (j == 0) fail(e, "integer division or modulo by zero");
        if (i == INT64_MIN && j == -1) fail(e, "integer overflow");
        int64_t q = i / j, m = i % j;
        if (m != 0 && ((m < 0) != (j < 0))) --q, m += j;  // Python floors
        return Value::integer(op == "//" ? q : m);
      }
      if (op == "**") {
        if (j < 0) return Value::number(std::pow(x, y));
        int64_t p = 1;
        for (int64_t k = 0; k < j; ++k)
          if (__builtin_mul_overflow(p, i, &p)) fail(e, "integer overflow");
        return Value::integer(p);
      }
    }
    if (op == "+") return Value::number(x + y);
    if (op == "-") return Value::number(x - y);
    if (op == "*") return Value::number(x * y);
    if (op == "**") return Value::number(std::pow(x, y));
    if (y == 0) fail(e, "float division or modulo by zero");
    if (op == "//") return Value::number(std::floor(x / y));
    double m = std::fmod(x, y);
    if (m != 0 && ((m < 0) != (y < 0))) m += y;
    return Value::number(m);
  }

  // Positional argument k (after the object), or keyword `name`, or nullptr.
  const Expr* arg(const Expr& e, size_t k, const char* name, size_t first = 1) {
    const size_t n_pos = e.args.size() - e.kwarg_names.size();
    if (first + k < n_pos) return e.args[first + k].get();
    for (size_t j = 0; j < e.kwarg_names.size(); ++j)
      if (e.kwarg_names[j] == name) return e.args[n_pos + j].get();
    return nullptr;
  }
  Value arg_value(const Expr& e, size_t k, const char* name, size_t first = 1) {
    const Expr* a = arg(e, k, name, first);
    return a ? eval(*a) : Value::undefined("");
  }
  std::string string_arg(const Expr& e, size_t k, const char* name, const char* dflt, size_t first = 1) {
    const Value v = arg_value(e, k, name, first);
    if (v.is(K::kUndefined)) return dflt;
    if (!v.is(K::kString)) fail(e, fmt::format("{}: expected a string argument", e.name));
    return v.s;
  }
  std::string need_string(const Expr& e, const Value& v) {
    require_defined(e, v);
    if (!v.is(K::kString)) fail(e, fmt::format("{}: expected a string, got {}", e.name, type_name(v)));
    return v.s;
  }

  Value call_global(const Expr& e) {
    if (e.name == "raise_exception") {
      const Value msg = arg_value(e, 0, "message", 0);
      throw Error("chat template raised: " + py_str(msg));
    }
    if (e.name == "namespace") {
      Dict d;
      const size_t n_pos = e.args.size() - e.kwarg_names.size();
      if (n_pos > 0) fail(e, "namespace() takes keyword arguments only");
      for (size_t j = 0; j < e.kwarg_names.size(); ++j) d.emplace_back(e.kwarg_names[j], eval(*e.args[j]));
      return Value::of_dict(std::move(d), K::kNamespace);
    }
    if (e.name == "strftime_now") {
      const std::string f = need_string(e, arg_value(e, 0, "format", 0));
      if (f.size() > 256) fail(e, "strftime_now: format too long");
      const std::time_t t = std::time(nullptr);
      std::tm tm{};
      localtime_r(&t, &tm);
      char buf[1024];
      const size_t n = std::strftime(buf, sizeof buf, f.c_str(), &tm);
      return Value::string(std::string(buf, n));
    }
    if (e.name == "range") {
      const size_t n_pos = e.args.size();
      int64_t lo = 0, hi = 0, st = 1;
      std::vector<int64_t> v;
      for (size_t k = 0; k < n_pos; ++k) {
        const Value x = eval(*e.args[k]);
        if (!x.is(K::kInt)) fail(e, "range() takes integers");
        v.push_back(x.i);
      }
      if (v.size() == 1) hi = v[0];
      else if (v.size() >= 2) lo = v[0], hi = v[1], st = v.size() > 2 ? v[2] : 1;
      if (st == 0 || v.empty() || v.size() > 3) fail(e, "bad range() arguments");
      List l;
      for (int64_t k = lo; st > 0 ? k < hi : k > hi; k += st) {
        if (l.size() >= kMaxListItems) fail(e, "range() too long");
        l.push_back(Value::integer(k));
      }
      return Value::of_list(std::move(l));
    }
    const Value f = lookup(e.name);
    if (f.is(K::kUndefined)) fail(e, f.s);
    fail(e, fmt::format("'{}' object is not callable", type_name(f)));
  }

  Value call_method(const Expr& e) {
    const Value obj = eval(*e.args[0]);
    require_defined(e, obj);
    const std::string& m = e.name;
    if (obj.is(K::kString)) {
      const std::string& s = obj.s;
      if (m == "strip" || m == "lstrip" || m == "rstrip") {
        const Value chars = arg_value(e, 0, "chars");
        const Value* c = chars.is(K::kString) ? &chars : nullptr;
        return Value::string(strip(s, m != "rstrip", m != "lstrip", c));
      }
      if (m == "upper" || m == "lower") return Value::string(ascii_case(s, m == "upper"));
      if (m == "title") return Value::string(py_title(s));
      if (m == "capitalize") {
        std::string r = ascii_case(s, false);
        if (!r.empty()) r[0] = char(std::toupper(static_cast<unsigned char>(r[0])));
        return Value::string(r);
      }
      if (m == "startswith" || m == "endswith") {
        const std::string x = need_string(e, arg_value(e, 0, "prefix"));
        const bool ok = x.size() <= s.size() &&
                        (m == "startswith" ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0);
        return Value::boolean(ok);
      }
      if (m == "split") return Value::of_list(split(e, s));
      if (m == "replace") return replace(e, s, 1);
      if (m == "find") {
        const size_t at = s.find(need_string(e, arg_value(e, 0, "sub")));
        return Value::integer(at == std::string::npos ? -1 : int64_t(code_points(s.substr(0, at)).size()) - 1);
      }
      if (m == "count") {
        const std::string x = need_string(e, arg_value(e, 0, "sub"));
        int64_t n = 0;
        if (x.empty()) return Value::integer(int64_t(code_points(s).size()));
        for (size_t at = s.find(x); at != std::string::npos; at = s.find(x, at + x.size())) ++n;
        return Value::integer(n);
      }
    }
    if (obj.is(K::kDict) || obj.is(K::kNamespace)) {
      if (m == "items" || m == "keys" || m == "values") {
        List l;
        for (const auto& kv : *obj.dict) {
          if (m == "items") l.push_back(Value::of_list({Value::string(kv.first), kv.second}));
          else l.push_back(m == "keys" ? Value::string(kv.first) : kv.second);
        }
        return Value::of_list(std::move(l));
      }
      if (m == "get") {
        const Value key = arg_value(e, 0, "key");
        if (key.is(K::kString))
          if (const Value* v = dict_find(*obj.dict, key.s)) return *v;
        const Value d = arg_value(e, 1, "default");
        return d.is(K::kUndefined) ? Value::none() : d;
      }
    }
    fail(e, fmt::format("'{}' object has no method '{}'", type_name(obj), m));
  }

  List split(const Expr& e, const std::string& s) {
    const Value sep = arg_value(e, 0, "sep");
    const Value maxv = arg_value(e, 1, "maxsplit");
    int64_t maxsplit = maxv.is(K::kInt) ? maxv.i : -1;
    List out;
    if (sep.is(K::kUndefined) || sep.is(K::kNone)) {  // runs of whitespace
      size_t k = 0;
      while (k < s.size()) {
        while (k < s.size() && py_space(s[k])) ++k;
        if (k >= s.size()) break;
        if (maxsplit >= 0 && int64_t(out.size()) == maxsplit) {
          out.push_back(Value::string(strip(s.substr(k), false, true)));
          break;
        }
        size_t j = k;
        while (j < s.size() && !py_space(s[j])) ++j;
        out.push_back(Value::string(s.substr(k, j - k)));
        k = j;
      }
      return out;
    }
    const std::string d = need_string(e, sep);
    if (d.empty()) fail(e, "empty separator");
    size_t k = 0;
    for (;;) {
      const size_t at = s.find(d, k);
      if (at == std::string::npos || (maxsplit >= 0 && int64_t(out.size()) == maxsplit)) break;
      out.push_back(Value::string(s.substr(k, at - k)));
      k = at + d.size();
    }
    out.push_back(Value::string(s.substr(k)));
    return out;
  }

  Value replace(const Expr& e, const std::string& s, size_t first) {
    const std::string from = need_string(e, arg_value(e, 0, "old", first));
    const std::string to = need_string(e, arg_value(e, 1, "new", first));
    const Value cv = arg_value(e, 2, "count", first);
    int64_t count = cv.is(K::kInt) ? cv.i : -1;
    std::string out;
    if (from.empty()) return Value::string(s);
    size_t k = 0;
    for (size_t at = s.find(from); at != std::string::npos && count != 0; at = s.find(from, k), --count) {
      out.append(s, k, at - k);
      out += to;
      check_size(e, out.size());
      k = at + from.size();
    }
    out.append(s, k);
    check_size(e, out.size());
    return Value::string(std::move(out));
  }

  Value apply_filter(const Expr& e) {
    const std::string& f = e.name;
    Value v = eval(*e.args[0]);
    if (f == "default" || f == "d") {
      const Value dflt = arg_value(e, 0, "default_value");
      const bool boolean = truthy(arg_value(e, 1, "boolean"));
      if (v.is(K::kUndefined) || (boolean && !truthy(v))) return dflt.is(K::kUndefined) ? Value::string("") : dflt;
      return v;
    }
    if (f == "safe") return v;
    if (f == "string") return Value::string(py_str(v));
    if (f == "tojson") {
      const Value ind = arg_value(e, 0, "indent");
      const int64_t indent = ind.is(K::kInt) ? std::clamp<int64_t>(ind.i, 0, 64) : -1;
      return Value::string(to_json(v, int(indent)));
    }
    if (f == "length" || f == "count") {
      if (v.is(K::kString)) return Value::integer(int64_t(code_points(v.s).size()) - 1);
      if (v.is(K::kList)) return Value::integer(int64_t(v.list->size()));
      if (v.is(K::kDict)) return Value::integer(int64_t(v.dict->size()));
      if (v.is(K::kUndefined)) return Value::integer(0);
      fail(e, fmt::format("object of type '{}' has no len()", type_name(v)));
    }
    if (f == "first" || f == "last") {
      List items = iterate(e, v);
      if (items.empty()) return Value::undefined("No first item, sequence was empty.");
      return f == "first" ? items.front() : items.back();
    }
    if (f == "list") return Value::of_list(iterate(e, v));
    if (f == "reverse") {
      if (v.is(K::kString)) {
        const List chars = iterate(e, v);
        std::string r;
        for (auto it = chars.rbegin(); it != chars.rend(); ++it) r += it->s;
        return Value::string(r);
      }
      List items = iterate(e, v);
      return Value::of_list(List(items.rbegin(), items.rend()));
    }
    if (f == "items") {
      if (v.is(K::kUndefined)) return Value::of_list({});
      if (!v.is(K::kDict)) fail(e, "items: expected a dict");
      List l;
      for (const auto& kv : *v.dict) l.push_back(Value::of_list({Value::string(kv.first), kv.second}));
      return Value::of_list(std::move(l));
    }
    if (f == "join") {
      const std::string sep = string_arg(e, 0, "d", "");
      const Value attr = arg_value(e, 1, "attribute");
      std::string out;
      bool first = true;
      for (const Value& it : iterate(e, v)) {
        if (!first) out += sep;
        first = false;
        out += py_str(attr.is(K::kUndefined) ? it : get_item(e, it, attr));
        check_size(e, out.size());
      }
      return Value::string(std::move(out));
    }
    if (f == "int") {
      if (v.is(K::kInt) || v.is(K::kBool)) return Value::integer(as_int(v));
      if (v.is(K::kFloat) && std::isfinite(v.f) && std::fabs(v.f) < 9e18) return Value::integer(int64_t(v.f));
      if (v.is(K::kString)) {
        char* end = nullptr;
        const std::string t = strip(v.s, true, true);
        const long long x = std::strtoll(t.c_str(), &end, 10);
        if (!t.empty() && end && *end == '\0') return Value::integer(x);
      }
      const Value d = arg_value(e, 0, "default");
      return d.is(K::kUndefined) ? Value::integer(0) : d;
    }
    if (f == "float") {
      if (is_number(v)) return Value::number(as_double(v));
      if (v.is(K::kString)) {
        char* end = nullptr;
        const std::string t = strip(v.s, true, true);
        const double x = std::strtod(t.c_str(), &end);
        if (!t.empty() && end && *end == '\0') return Value::number(x);
      }
      return Value::number(0);
    }
    if (f == "abs") {
      if (v.is(K::kFloat)) return Value::number(std::fabs(v.f));
      if (is_number(v) && as_int(v) != INT64_MIN) return Value::integer(std::llabs(as_int(v)));
      fail(e, "abs: expected a number");
    }
    if (f == "min" || f == "max" || f == "unique") {
      List items = iterate(e, v);
      if (f == "unique") {
        List out;
        for (const auto& it : items) {
          bool seen = false;
          for (const auto& o : out) seen = seen || equal(o, it);
          if (!seen) out.push_back(it);
        }
        return Value::of_list(std::move(out));
      }
      if (items.empty()) return Value::undefined("empty sequence");
      Value best = items[0];
      for (const auto& it : items) {
        const int c = compare(e, "<", it, best) ? -1 : compare(e, ">", it, best) ? 1 : 0;
        if ((f == "min" && c < 0) || (f == "max" && c > 0)) best = it;
      }
      return best;
    }
    // String filters: jinja2 converts the value with str() first.
    require_defined(e, v);
    const std::string s = py_str(v);
    if (f == "trim") {
      const Value chars = arg_value(e, 0, "chars");
      return Value::string(strip(s, true, true, chars.is(K::kString) ? &chars : nullptr));
    }
    if (f == "upper" || f == "lower") return Value::string(ascii_case(s, f == "upper"));
    if (f == "title") return Value::string(jinja_title(s));
    if (f == "capitalize") {
      std::string r = ascii_case(s, false);
      if (!r.empty()) r[0] = char(std::toupper(static_cast<unsigned char>(r[0])));
      return Value::string(r);
    }
    if (f == "replace") return replace(e, s, 1);
    if (f == "wordcount") return Value::integer(int64_t(split(e, s).size()));
    if (f == "indent" || f == "center") {
      const Value w = arg_value(e, 0, "width");
      const int64_t width = std::clamp<int64_t>(w.is(K::kInt) ? w.i : (f == "indent" ? 4 : 80), 0, 1024);
      if (f == "center") {
        const int64_t len = int64_t(code_points(s).size()) - 1;
        if (len >= width) return Value::string(s);
        const int64_t left = (width - len) / 2 + ((width - len) & width & 1);
        return Value::string(std::string(size_t(left), ' ') + s + std::string(size_t(width - len - left), ' '));
      }
      const std::string pad(size_t(width), ' ');
      const bool first = truthy(arg_value(e, 1, "first"));
      const bool blank = truthy(arg_value(e, 2, "blank"));
      std::string out = first && !s.empty() ? pad : "";
      for (size_t k = 0; k < s.size(); ++k) {
        out += s[k];
        if (s[k] == '\n' && k + 1 < s.size() && (blank || s[k + 1] != '\n')) out += pad;
        check_size(e, out.size());
      }
      return Value::string(std::move(out));
    }
    if (f == "select" || f == "reject" || f == "selectattr" || f == "rejectattr") {
      // jinja2: keep (select) or drop (reject) the items for which the test passes; the
      // test is applied to the item's attribute with *attr (dotted paths allowed); no
      // test name: the value's truthiness.
      const bool by_attr = f.size() > 6 && f.compare(f.size() - 4, 4, "attr") == 0;
      const bool keep = f[0] == 's';
      size_t k = 0;
      std::string attr;
      if (by_attr) {
        attr = need_string(e, arg_value(e, 0, "attribute"));
        k = 1;
      }
      const Value test = arg_value(e, k, "");
      const Value targ = arg_value(e, k + 1, "");
      List out;
      for (const Value& it : iterate(e, v)) {
        step(e.line);
        const Value x = by_attr ? attribute_path(e, it, attr) : it;
        const bool pass = test.is(K::kUndefined) ? truthy(x) : test_value(e, need_string(e, test), x, targ);
        if (pass == keep) out.push_back(it);
      }
      return Value::of_list(std::move(out));
    }
    if (f == "map") {
      // map(attribute='a.b', default=x) or map('filter') for filters without arguments.
      const Value attr = arg_value(e, 99, "attribute");
      List out;
      if (!attr.is(K::kUndefined)) {
        const Value dflt = arg_value(e, 99, "default");
        for (const Value& it : iterate(e, v)) {
          step(e.line);
          Value x = attribute_path(e, it, need_string(e, attr));
          out.push_back(x.is(K::kUndefined) && !dflt.is(K::kUndefined) ? dflt : x);
        }
        return Value::of_list(std::move(out));
      }
      const std::string name = need_string(e, arg_value(e, 0, ""));
      static const char* const kPlain[] = {"string", "lower", "upper", "trim", "title", "capitalize", "tojson",
                                           "length", "count", "int", "float", "abs", "first", "last", "list"};
      if (std::find_if(std::begin(kPlain), std::end(kPlain), [&](const char* n) { return name == n; }) == std::end(kPlain))
        fail(e, fmt::format("map: filter '{}' is not supported here (use map(attribute=...) or a filter without arguments)", name));
      Expr call;
      call.kind = e.kind;
      call.line = e.line;
      call.col = e.col;
      call.name = name;
      auto lit = std::make_unique<Expr>();
      lit->kind = ExprKind::kLiteral;
      call.args.push_back(std::move(lit));
      for (const Value& it : iterate(e, v)) {
        step(e.line);
        call.args[0]->value = it;
        out.push_back(apply_filter(call));
      }
      return Value::of_list(std::move(out));
    }
    fail(e, "unknown filter '" + f + "'");
  }

  // obj.a.b for map / selectattr: undefined where a step is missing.
  Value attribute_path(const Expr& e, const Value& obj, const std::string& path) {
    Value cur = obj;
    size_t k = 0;
    for (;;) {
      const size_t dot = path.find('.', k);
      const std::string part = path.substr(k, dot == std::string::npos ? std::string::npos : dot - k);
      if (cur.is(K::kUndefined)) return cur;
      const bool digits = !part.empty() && part.find_first_not_of("0123456789") == std::string::npos;
      cur = (cur.is(K::kList) && digits) ? get_item(e, cur, Value::integer(std::stoll(part.substr(0, 18))))
                                          : get_item(e, cur, Value::string(part));
      if (dot == std::string::npos) return cur;
      k = dot + 1;
    }
  }

  bool run_test(const Expr& e) {
    const Value v = eval(*e.args[0]);
    const std::string& t = e.name;
    const bool needs_arg = t == "divisibleby" || t == "eq" || t == "equalto" || t == "ne" || t == "in" ||
                           t == "gt" || t == "ge" || t == "lt" || t == "le" ||
                           t == "greaterthan" || t == "lessthan";
    return test_value(e, t, v, needs_arg ? arg_value(e, 0, t == "divisibleby" ? "num" : "other") : Value::undefined(""));
  }

  // The test named t on v; `other`: its argument where it takes one.
  bool test_value(const Expr& e, const std::string& t, const Value& v, const Value& other) {
    if (t == "defined") return !v.is(K::kUndefined);
    if (t == "undefined") return v.is(K::kUndefined);
    if (t == "none") return v.is(K::kNone);
    if (t == "string") return v.is(K::kString);
    if (t == "boolean") return v.is(K::kBool);
    if (t == "true") return v.is(K::kBool) && v.b;
    if (t == "false") return v.is(K::kBool) && !v.b;
    if (t == "number") return is_number(v);
    if (t == "integer") return v.is(K::kInt);
    if (t == "float") return v.is(K::kFloat);
    if (t == "mapping") return v.is(K::kDict);
    if (t == "sequence") return v.is(K::kList) || v.is(K::kString) || v.is(K::kDict);
    if (t == "iterable") return v.is(K::kList) || v.is(K::kString) || v.is(K::kDict);
    if (t == "callable") return false;
    if (t == "lower" || t == "upper") {
      const std::string s = py_str(v);
      return s == ascii_case(s, t == "upper") && s != ascii_case(s, t != "upper");
    }
    if (t == "odd" || t == "even" || t == "divisibleby") {
      if (!v.is(K::kInt)) fail(e, fmt::format("test '{}' needs an integer", t));
      int64_t d = 2;
      if (t == "divisibleby") {
        const Value& dv = other;
        if (!dv.is(K::kInt) || dv.i == 0) fail(e, "divisibleby needs a non-zero integer");
        d = dv.i;
      }
      const int64_t m = d == -1 ? 0 : v.i % d;
      return t == "odd" ? m != 0 : m == 0;
    }
    if (t == "eq" || t == "equalto") return equal(v, other);
    if (t == "gt" || t == "greaterthan") return compare(e, ">", v, other);
    if (t == "ge") return compare(e, ">=", v, other);
    if (t == "lt" || t == "lessthan") return compare(e, "<", v, other);
    if (t == "le") return compare(e, "<=", v, other);
    if (t == "ne") return !equal(v, other);
    if (t == "in") return contains(e, other, v);
    fail(e, "unknown test '" + t + "'");
  }

  std::vector<std::unordered_map<std::string, Value>> scopes_;
  std::string out_;
  int64_t steps_ = 0;
};

}  // namespace

std::string render(const Program& program, const std::vector<ChatMessage>& messages,
                   const ChatTemplateOptions& options) {
  Renderer r(messages, options);
  return r.run(program);
}

}  // namespace kmq::chat
