// Chat-template internals: values, the syntax tree and the parser/evaluator entry points
// shared by chat_template_parse.cpp (lexer + parser) and chat_template_eval.cpp.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "text/chat_template.h"

namespace kmq::chat {

// Bounds for untrusted templates.
constexpr int kMaxNesting = 64;                  // nested blocks, and expression depth / 2
constexpr size_t kMaxOutput = 1 << 20;           // bytes of output and of any one string
constexpr int64_t kMaxSteps = 1000000;           // statements run + loop iterations
constexpr size_t kMaxListItems = 100000;         // items of any one list built by the template

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion order, string keys

// A Python/Jinja value. Lists and dicts are immutable once built and shared; a namespace
// is a dict that `{% set ns.x = ... %}` mutates in place.
struct Value {
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kNamespace };
  Kind kind = Kind::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // string; for kUndefined, a hint naming what was missing
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;

  static Value none() { Value v; v.kind = Kind::kNone; return v; }
  static Value boolean(bool x) { Value v; v.kind = Kind::kBool; v.b = x; return v; }
  static Value integer(int64_t x) { Value v; v.kind = Kind::kInt; v.i = x; return v; }
  static Value number(double x) { Value v; v.kind = Kind::kFloat; v.f = x; return v; }
  static Value string(std::string x) { Value v; v.kind = Kind::kString; v.s = std::move(x); return v; }
  static Value undefined(std::string hint) { Value v; v.s = std::move(hint); return v; }
  static Value of_list(List l) {
    Value v; v.kind = Kind::kList; v.list = std::make_shared<List>(std::move(l)); return v;
  }
  static Value of_dict(Dict d, Kind k = Kind::kDict) {
    Value v; v.kind = k; v.dict = std::make_shared<Dict>(std::move(d)); return v;
  }
  bool is(Kind k) const { return kind == k; }
};

enum class ExprKind {
  kLiteral,    // value
  kName,       // name
  kList,       // args
  kDict,       // args: key0, value0, key1, value1, ...
  kAttr,       // args[0].name
  kItem,       // args[0][args[1]]
  kSlice,      // args[0][args[1]:args[2]:args[3]]; absent parts are nullptr
  kCall,       // name(args) for a global function, or args[0].name(args[1:]) for a method
  kMethod,
  kFilter,     // args[0] | name(args[1:])
  kTest,       // args[0] is [not] name(args[1:]); negate
  kUnary,      // op args[0]: "not", "-", "+"
  kBinary,     // args[0] op args[1]
  kAnd, kOr,
  kCompare,    // args[0] ops[0] args[1] ops[1] args[2] ... (chained, Python style)
  kCond,       // args[0] if args[1] else args[2] (args[2] may be nullptr)
};

struct Expr {
  ExprKind kind = ExprKind::kLiteral;
  int line = 0, col = 0;
  std::string name;                          // identifier, attribute, operator, filter
  Value value;                               // kLiteral
  std::vector<std::unique_ptr<Expr>> args;   // positional operands/arguments
  std::vector<std::string> kwarg_names;      // names of the trailing keyword arguments
  std::vector<std::string> ops;              // kCompare
  bool negate = false;                       // kTest
};

enum class StmtKind { kText, kOutput, kIf, kFor, kSet, kBreak, kContinue, kBlock };

struct Stmt {
  StmtKind kind = StmtKind::kText;
  int line = 0, col = 0;
  std::string text;                            // kText
  std::unique_ptr<Expr> expr;                  // output / if condition / for iterable / set value
  std::unique_ptr<Expr> filter;                // for ... if filter
  std::vector<std::string> targets;            // for targets; set: {name} or {ns, attr}
  std::vector<Stmt> body, else_body;           // if: then/else (elif nests); for: body/else
};

struct Program {
  std::vector<Stmt> body;
};

// Throws kmq::Error "chat template: line L, column C: ..." on a syntax error.
std::shared_ptr<const Program> parse(const std::string& source);
std::string render(const Program& program, const std::vector<ChatMessage>& messages,
                   const ChatTemplateOptions& options);

}  // namespace kmq::chat
