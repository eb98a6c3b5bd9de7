// Chat-template lexer and parser: splits the source into text, {{ }}, {% %} and {# #}
// with jinja2's whitespace rules (trim_blocks, lstrip_blocks, '-' and '+' markers) and
// parses the tags into the syntax tree of chat_template_ast.h.
#include <fmt/format.h>

#include <set>

#include "kmq/error.h"
#include "text/chat_template_ast.h"

namespace kmq::chat {
namespace {

enum class TokKind { kName, kString, kInt, kFloat, kOp, kEnd };

struct Token {
  TokKind kind = TokKind::kEnd;
  std::string text;  // name, decoded string, operator, number text
  int line = 0, col = 0;
};

// One piece of the template: text, or the tokens of one tag.
struct Piece {
  enum class Kind { kText, kOutput, kBlock } kind = Kind::kText;
  std::string text;
  std::vector<Token> tokens;  // ends with a kEnd token
  int line = 0, col = 0;
};

[[noreturn]] void fail(int line, int col, const std::string& msg) {
  throw Error(fmt::format("chat template: line {}, column {}: {}", line, col, msg));
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

class Lexer {
 public:
  explicit Lexer(const std::string& src) : s_(src) {}

  std::vector<Piece> run() {
    std::vector<Piece> out;
    std::string text;
    bool strip_next = false;   // the previous tag ended with '-'
    bool trim_next = false;    // the previous tag was a block/comment: drop one '\n'
    while (pos_ < s_.size()) {
      const size_t open = find_open(pos_);
      const size_t text_end = open == std::string::npos ? s_.size() : open;
      size_t a = pos_;
      if (strip_next) {
        while (a < text_end && is_space(s_[a])) advance_to(a + 1), a = pos_;
      } else if (trim_next && a < text_end && s_[a] == '\n') {
        advance_to(a + 1), a = pos_;
      }
      text.assign(s_, a, text_end - a);
      const int text_line = line_, text_col = col_;
      advance_to(text_end);
      strip_next = trim_next = false;
      if (open != std::string::npos) {
        const char kind = s_[open + 1];  // '{', '%' or '#'
        const char marker = open + 2 < s_.size() ? s_[open + 2] : '\0';
        if (marker == '-') {
          while (!text.empty() && is_space(text.back())) text.pop_back();
        } else if (kind != '{' && marker != '+') {
          lstrip_block(text, open);
        }
      }
      if (!text.empty()) out.push_back(Piece{Piece::Kind::kText, text, {}, text_line, text_col});
      if (open == std::string::npos) break;
      const char kind = s_[open + 1];
      const int line = line_, col = col_;
      size_t p = open + 2;
      if (p < s_.size() && (s_[p] == '-' || s_[p] == '+')) ++p;
      advance_to(p);
      if (kind == '#') {
        const size_t close = s_.find("#}", pos_);
        if (close == std::string::npos) fail(line, col, "unterminated comment");
        strip_next = close > pos_ && s_[close - 1] == '-';
        trim_next = !(close > pos_ && s_[close - 1] == '+');
        advance_to(close + 2);
        continue;
      }
      Piece piece;
      piece.kind = kind == '{' ? Piece::Kind::kOutput : Piece::Kind::kBlock;
      piece.line = line, piece.col = col;
      const char close_char = kind == '{' ? '}' : '%';
      for (;;) {
        skip_spaces();
        if (pos_ >= s_.size()) fail(line, col, "unterminated tag");
        // The closing marker: "-}}", "+%}", "}}", "%}".
        size_t q = pos_;
        char mark = '\0';
        if ((s_[q] == '-' || s_[q] == '+') && q + 2 < s_.size() + 0 && s_[q + 1] == close_char &&
            s_[q + 2] == '}')
          mark = s_[q], ++q;
        if (q + 1 < s_.size() && s_[q] == close_char && s_[q + 1] == '}') {
          piece.tokens.push_back(Token{TokKind::kEnd, "", line_, col_});
          advance_to(q + 2);
          strip_next = mark == '-';
          trim_next = kind == '%' && mark != '+';
          break;
        }
        piece.tokens.push_back(next_token());
      }
      out.push_back(std::move(piece));
    }
    return out;
  }

 private:
  size_t find_open(size_t from) const {
    for (size_t p = s_.find('{', from); p != std::string::npos; p = s_.find('{', p + 1))
      if (p + 1 < s_.size() && (s_[p + 1] == '{' || s_[p + 1] == '%' || s_[p + 1] == '#')) return p;
    return std::string::npos;
  }

  // lstrip_blocks: spaces and tabs between the line start and a block or comment tag go.
  void lstrip_block(std::string& text, size_t open) const {
    const size_t nl = text.rfind('\n');
    const size_t l = nl == std::string::npos ? 0 : nl + 1;
    const size_t text_start = open - text.size();
    const bool line_start = nl != std::string::npos || text_start == 0 || s_[text_start - 1] == '\n';
    if (!line_start) return;
    for (size_t k = l; k < text.size(); ++k)
      if (text[k] != ' ' && text[k] != '\t') return;
    text.resize(l);
  }

  void advance_to(size_t p) {
    for (; pos_ < p; ++pos_) {
      if (s_[pos_] == '\n') ++line_, col_ = 1;
      else ++col_;
    }
  }
  void skip_spaces() {
    size_t p = pos_;
    while (p < s_.size() && is_space(s_[p])) ++p;
    advance_to(p);
  }

  Token next_token() {
    Token t;
    t.line = line_, t.col = col_;
    const char c = s_[pos_];
    size_t p = pos_;
    if (is_name_start(c)) {
      while (p < s_.size() && (is_name_start(s_[p]) || is_digit(s_[p]))) ++p;
      t.kind = TokKind::kName;
      t.text = s_.substr(pos_, p - pos_);
    } else if (is_digit(c)) {
      t.kind = TokKind::kInt;
      while (p < s_.size() && (is_digit(s_[p]) || s_[p] == '_')) ++p;
      if (p + 1 < s_.size() && s_[p] == '.' && is_digit(s_[p + 1])) {
        t.kind = TokKind::kFloat;
        ++p;
        while (p < s_.size() && (is_digit(s_[p]) || s_[p] == '_')) ++p;
      }
      if (p < s_.size() && (s_[p] == 'e' || s_[p] == 'E')) {
        size_t q = p + 1;
        if (q < s_.size() && (s_[q] == '+' || s_[q] == '-')) ++q;
        if (q < s_.size() && is_digit(s_[q])) {
          t.kind = TokKind::kFloat;
          p = q;
          while (p < s_.size() && is_digit(s_[p])) ++p;
        }
      }
      for (size_t k = pos_; k < p; ++k)
        if (s_[k] != '_') t.text += s_[k];
    } else if (c == '\'' || c == '"') {
      t.kind = TokKind::kString;
      ++p;
      for (;;) {
        if (p >= s_.size()) fail(t.line, t.col, "unterminated string");
        const char d = s_[p];
        if (d == c) { ++p; break; }
        if (d == '\\' && p + 1 < s_.size()) {
          p = unescape(p, t.text);
          continue;
        }
        t.text += d;
        ++p;
      }
    } else {
      static const char* kOps[] = {"//", "**", "==", "!=", "<=", ">=", "(", ")", "[", "]", "{",
                                   "}", ".", ",", ":", "|", "~", "+", "-", "*", "/", "%", "=",
                                   "<", ">"};
      for (const char* op : kOps) {
        const size_t n = std::char_traits<char>::length(op);
        if (s_.compare(pos_, n, op) == 0) {
          t.kind = TokKind::kOp;
          t.text = op;
          p = pos_ + n;
          break;
        }
      }
      if (t.kind != TokKind::kOp) fail(t.line, t.col, fmt::format("unexpected character '{}'", c));
    }
    advance_to(p);
    return t;
  }

  // Python string escapes; an unknown escape keeps its backslash (as Python does).
  size_t unescape(size_t p, std::string& out) const {
    const char e = s_[p + 1];
    switch (e) {
      case 'n': out += '\n'; return p + 2;
      case 't': out += '\t'; return p + 2;
      case 'r': out += '\r'; return p + 2;
      case '0': out += '\0'; return p + 2;
      case 'a': out += '\a'; return p + 2;
      case 'b': out += '\b'; return p + 2;
      case 'f': out += '\f'; return p + 2;
      case 'v': out += '\v'; return p + 2;
      case '\\': case '\'': case '"': out += e; return p + 2;
      case '\n': return p + 2;
      case 'x': case 'u': case 'U': {
        const size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
        if (p + 2 + n > s_.size()) break;
        uint32_t cp = 0;
        for (size_t k = 0; k < n; ++k) {
          const char h = s_[p + 2 + k];
          const int d = is_digit(h) ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                                              : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
          if (d < 0) fail(line_, col_, "bad escape in string");
          cp = cp * 16 + uint32_t(d);
        }
        if (cp > 0x10FFFF) fail(line_, col_, "bad escape in string");
        append_cp(out, cp);
        return p + 2 + n;
      }
      default: break;
    }
    out += '\\';
    return p + 1;
  }

  static void append_cp(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6)), out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12)), out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18)), out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F)), out += char(0x80 | (cp & 0x3F));
    }
  }

  const std::string& s_;
  size_t pos_ = 0;
  int line_ = 1, col_ = 1;
};

const std::set<std::string> kFilters = {
    "trim", "length", "count", "upper", "lower", "tojson", "default", "d", "join", "title",
    "first", "last", "string", "int", "float", "capitalize", "replace", "list", "safe", "abs",
    "items", "reverse", "unique", "min", "max", "wordcount", "indent", "center",
    "select", "reject", "selectattr", "rejectattr", "map"};
const std::set<std::string> kTests = {
    "defined", "undefined", "none", "string", "number", "integer", "float", "mapping",
    "iterable", "sequence", "boolean", "true", "false", "odd", "even", "eq", "ne", "equalto",
    "in", "lower", "upper", "divisibleby", "callable",
    "gt", "ge", "lt", "le", "greaterthan", "lessthan"};

// Expression parser over the tokens of one tag (jinja2's precedence: cond < or < and <
// not < compare < + - < ~ < * / // % < ** < unary < postfix, filters and tests).
class ExprParser {
 public:
  explicit ExprParser(const std::vector<Token>& toks) : t_(toks) {}

  const Token& peek(size_t k = 0) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
  bool at_end() const { return peek().kind == TokKind::kEnd; }
  bool is_op(const char* op, size_t k = 0) const { return peek(k).kind == TokKind::kOp && peek(k).text == op; }
  bool is_name(const char* n, size_t k = 0) const { return peek(k).kind == TokKind::kName && peek(k).text == n; }
  const Token& take() {
    const Token& t = peek();
    if (p_ < t_.size() - 1) ++p_;
    return t;
  }
  void expect_op(const char* op) {
    if (!is_op(op)) error(fmt::format("expected '{}'", op));
    take();
  }
  std::string expect_name() {
    if (peek().kind != TokKind::kName) error("expected a name");
    return take().text;
  }
  void expect_end() {
    if (!at_end()) error(fmt::format("unexpected '{}'", peek().text));
  }
  [[noreturn]] void error(const std::string& msg) const { fail(peek().line, peek().col, msg); }

  std::unique_ptr<Expr> expression() {
    Depth d(this);
    auto e = or_expr();
    if (is_name("if")) {
      auto c = make(ExprKind::kCond, peek());
      take();
      c->args.push_back(std::move(e));
      c->args.push_back(or_expr());
      if (is_name("else")) {
        take();
        c->args.push_back(expression());
      } else {
        c->args.push_back(nullptr);
      }
      return c;
    }
    return e;
  }

  // An expression that stops before a top-level `if` (for-loop iterables).
  std::unique_ptr<Expr> or_expr() {
    auto e = and_expr();
    while (is_name("or")) {
      auto n = make(ExprKind::kOr, take());
      n->args.push_back(std::move(e));
      n->args.push_back(and_expr());
      e = std::move(n);
    }
    return e;
  }

 private:
  struct Depth {
    explicit Depth(ExprParser* p) : p_(p) {
      if (++p_->depth_ > 2 * kMaxNesting) p_->error("expression nested too deeply");
    }
    ~Depth() { --p_->depth_; }
    ExprParser* p_;
  };

  static std::unique_ptr<Expr> make(ExprKind k, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = k, e->line = at.line, e->col = at.col;
    return e;
  }

  std::unique_ptr<Expr> and_expr() {
    auto e = not_expr();
    while (is_name("and")) {
      auto n = make(ExprKind::kAnd, take());
      n->args.push_back(std::move(e));
      n->args.push_back(not_expr());
      e = std::move(n);
    }
    return e;
  }
  std::unique_ptr<Expr> not_expr() {
    if (is_name("not")) {
      Depth d(this);
      auto n = make(ExprKind::kUnary, take());
      n->name = "not";
      n->args.push_back(not_expr());
      return n;
    }
    return compare();
  }
  std::unique_ptr<Expr> compare() {
    auto first = math1();
    std::unique_ptr<Expr> c;
    for (;;) {
      std::string op;
      const Token& at = peek();
      if (peek().kind == TokKind::kOp && (is_op("==") || is_op("!=") || is_op("<") ||
                                          is_op("<=") || is_op(">") || is_op(">="))) {
        op = take().text;
      } else if (is_name("in")) {
        take(), op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        take(), take(), op = "not in";
      } else {
        break;
      }
      if (!c) {
        c = make(ExprKind::kCompare, at);
        c->args.push_back(std::move(first));
      }
      c->ops.push_back(op);
      c->args.push_back(math1());
    }
    return c ? std::move(c) : std::move(first);
  }
  std::unique_ptr<Expr> binary_left(std::unique_ptr<Expr> (ExprParser::*next)(),
                                    std::initializer_list<const char*> ops) {
    auto e = (this->*next)();
    for (;;) {
      const char* hit = nullptr;
      for (const char* op : ops)
        if (is_op(op)) hit = op;
      if (!hit) return e;
      auto n = make(ExprKind::kBinary, take());
      n->name = hit;
      n->args.push_back(std::move(e));
      n->args.push_back((this->*next)());
      e = std::move(n);
    }
  }
  std::unique_ptr<Expr> math1() { return binary_left(&ExprParser::concat, {"+", "-"}); }
  std::unique_ptr<Expr> concat() { return binary_left(&ExprParser::math2, {"~"}); }
  std::unique_ptr<Expr> math2() { return binary_left(&ExprParser::power, {"*", "/", "//", "%"}); }
  std::unique_ptr<Expr> power() { return binary_left(&ExprParser::unary_filtered, {"**"}); }
  std::unique_ptr<Expr> unary_filtered() { return unary(true); }

  std::unique_ptr<Expr> unary(bool with_filter) {
    Depth d(this);
    std::unique_ptr<Expr> e;
    if (is_op("-") || is_op("+")) {
      e = make(ExprKind::kUnary, peek());
      e->name = take().text;
      e->args.push_back(unary(false));
    } else {
      e = primary();
    }
    e = postfix(std::move(e));
    if (with_filter) e = filters(std::move(e));
    return e;
  }

  std::unique_ptr<Expr> primary() {
    const Token& t = peek();
    if (t.kind == TokKind::kName) {
      take();
      if (t.text == "true" || t.text == "True") return literal(t, Value::boolean(true));
      if (t.text == "false" || t.text == "False") return literal(t, Value::boolean(false));
      if (t.text == "none" || t.text == "None") return literal(t, Value::none());
      auto e = make(ExprKind::kName, t);
      e->name = t.text;
      return e;
    }
    if (t.kind == TokKind::kString) {
      take();
      std::string s = t.text;
      while (peek().kind == TokKind::kString) s += take().text;  // implicit concatenation
      return literal(t, Value::string(std::move(s)));
    }
    if (t.kind == TokKind::kInt) {
      take();
      errno = 0;
      const long long v = std::strtoll(t.text.c_str(), nullptr, 10);
      if (errno == ERANGE) fail(t.line, t.col, "integer literal out of range");
      return literal(t, Value::integer(v));
    }
    if (t.kind == TokKind::kFloat) {
      take();
      return literal(t, Value::number(std::strtod(t.text.c_str(), nullptr)));
    }
    if (is_op("(")) {
      take();
      auto e = expression();
      if (is_op(",")) {  // a tuple: a list here
        auto l = make(ExprKind::kList, t);
        l->args.push_back(std::move(e));
        while (is_op(",")) {
          take();
          if (is_op(")")) break;
          l->args.push_back(expression());
        }
        e = std::move(l);
      }
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      take();
      auto l = make(ExprKind::kList, t);
      while (!is_op("]")) {
        l->args.push_back(expression());
        if (!is_op(",")) break;
        take();
      }
      expect_op("]");
      return l;
    }
    if (is_op("{")) {
      take();
      auto d = make(ExprKind::kDict, t);
      while (!is_op("}")) {
        d->args.push_back(expression());
        expect_op(":");
        d->args.push_back(expression());
        if (!is_op(",")) break;
        take();
      }
      expect_op("}");
      return d;
    }
    if (at_end()) error("unexpected end of tag");
    error(fmt::format("unexpected '{}'", t.text));
  }

  static std::unique_ptr<Expr> literal(const Token& t, Value v) {
    auto e = make(ExprKind::kLiteral, t);
    e->value = std::move(v);
    return e;
  }

  std::unique_ptr<Expr> postfix(std::unique_ptr<Expr> e) {
    for (;;) {
      if (is_op(".")) {
        const Token& at = take();
        std::string name;
        if (peek().kind == TokKind::kInt) {  // x.0 is x[0]
          auto idx = literal(peek(), Value::integer(std::strtoll(peek().text.c_str(), nullptr, 10)));
          take();
          auto n = make(ExprKind::kItem, at);
          n->args.push_back(std::move(e));
          n->args.push_back(std::move(idx));
          e = std::move(n);
          continue;
        }
        name = expect_name();
        if (is_op("(")) {
          auto n = make(ExprKind::kMethod, at);
          n->name = name;
          n->args.push_back(std::move(e));
          call_args(*n);
          e = std::move(n);
        } else {
          auto n = make(ExprKind::kAttr, at);
          n->name = name;
          n->args.push_back(std::move(e));
          e = std::move(n);
        }
      } else if (is_op("[")) {
        const Token& at = take();
        std::unique_ptr<Expr> parts[3];
        int n_colons = 0;
        if (!is_op(":")) parts[0] = expression();
        while (is_op(":") && n_colons < 2) {
          take();
          ++n_colons;
          if (!is_op(":") && !is_op("]")) parts[n_colons] = expression();
        }
        expect_op("]");
        auto n = make(n_colons ? ExprKind::kSlice : ExprKind::kItem, at);
        n->args.push_back(std::move(e));
        if (n_colons) {
          for (auto& p : parts) n->args.push_back(std::move(p));
        } else {
          if (!parts[0]) fail(at.line, at.col, "empty subscript");
          n->args.push_back(std::move(parts[0]));
        }
        e = std::move(n);
      } else if (is_op("(")) {
        if (e->kind != ExprKind::kName) error("only named functions can be called");
        auto n = make(ExprKind::kCall, peek());
        n->name = e->name;
        call_args(*n);
        e = std::move(n);
      } else {
        return e;
      }
    }
  }

  // "(a, b, k=c)": positional arguments appended to e.args, then keyword arguments.
  void call_args(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (peek().kind == TokKind::kName && is_op("=", 1)) {
        e.kwarg_names.push_back(take().text);
        take();
        e.args.push_back(expression());
      } else {
        if (!e.kwarg_names.empty()) error("positional argument after keyword argument");
        e.args.push_back(expression());
      }
      if (!is_op(",")) break;
      take();
    }
    expect_op(")");
  }

  std::unique_ptr<Expr> filters(std::unique_ptr<Expr> e) {
    for (;;) {
      if (is_op("|")) {
        const Token& at = take();
        auto n = make(ExprKind::kFilter, at);
        const Token& name_tok = peek();
        n->name = expect_name();
        if (!kFilters.count(n->name)) fail(name_tok.line, name_tok.col, "unknown filter '" + n->name + "'");
        n->args.push_back(std::move(e));
        if (is_op("(")) call_args(*n);
        e = std::move(n);
      } else if (is_name("is")) {
        const Token& at = take();
        auto n = make(ExprKind::kTest, at);
        if (is_name("not")) take(), n->negate = true;
        const Token& name_tok = peek();
        n->name = expect_name();
        if (!kTests.count(n->name)) fail(name_tok.line, name_tok.col, "unknown test '" + n->name + "'");
        n->args.push_back(std::move(e));
        if (is_op("(")) {
          call_args(*n);
        } else if (!at_end() && peek().kind != TokKind::kOp && !is_name("and") && !is_name("or") &&
                   !is_name("if") && !is_name("else") && !is_name("is") && !is_name("in") &&
                   !is_name("not")) {
          n->args.push_back(unary(false));  // `x is divisibleby 3`
        }
        e = std::move(n);
      } else {
        return e;
      }
    }
  }

  const std::vector<Token>& t_;
  size_t p_ = 0;
  int depth_ = 0;
};

class Parser {
 public:
  explicit Parser(std::vector<Piece> pieces) : pieces_(std::move(pieces)) {}

  std::vector<Stmt> parse_all() {
    std::string end;
    auto body = parse_body({}, end, 0);
    return body;
  }

 private:
  // Statements until one of `ends` (a block keyword); its name goes to `end`.
  std::vector<Stmt> parse_body(const std::set<std::string>& ends, std::string& end, int depth) {
    if (depth > kMaxNesting) {
      const Piece& p = pieces_[std::min(i_, pieces_.size() - 1)];
      fail(p.line, p.col, "blocks nested too deeply");
    }
    std::vector<Stmt> out;
    while (i_ < pieces_.size()) {
      const Piece& p = pieces_[i_++];
      Stmt st;
      st.line = p.line, st.col = p.col;
      if (p.kind == Piece::Kind::kText) {
        st.kind = StmtKind::kText;
        st.text = p.text;
        out.push_back(std::move(st));
        continue;
      }
      ExprParser ep(p.tokens);
      if (p.kind == Piece::Kind::kOutput) {
        st.kind = StmtKind::kOutput;
        st.expr = ep.expression();
        ep.expect_end();
        out.push_back(std::move(st));
        continue;
      }
      const std::string kw = ep.expect_name();
      if (ends.count(kw)) {
        end = kw;
        cur_ = &p;
        return out;
      }
      if (kw == "if") {
        parse_if(st, ep, depth);
      } else if (kw == "for") {
        st.kind = StmtKind::kFor;
        st.targets.push_back(ep.expect_name());
        while (ep.is_op(",")) {
          ep.take();
          st.targets.push_back(ep.expect_name());
        }
        if (!ep.is_name("in")) ep.error("expected 'in'");
        ep.take();
        st.expr = ep.or_expr();
        if (ep.is_name("if")) {
          ep.take();
          st.filter = ep.or_expr();
        }
        if (ep.is_name("recursive")) ep.error("recursive loops are not supported");
        ep.expect_end();
        std::string e;
        st.body = parse_body({"else", "endfor"}, e, depth + 1);
        if (e == "else") {
          expect_bare();
          st.else_body = parse_body({"endfor"}, e, depth + 1);
        }
        if (e != "endfor") unclosed(st, "for");
        expect_bare();
      } else if (kw == "set") {
        st.kind = StmtKind::kSet;
        st.targets.push_back(ep.expect_name());
        if (ep.is_op(".")) {
          ep.take();
          st.targets.push_back(ep.expect_name());
        }
        if (!ep.is_op("=")) ep.error("expected '=' (block set is not supported)");
        ep.take();
        st.expr = ep.expression();
        ep.expect_end();
      } else if (kw == "break" || kw == "continue") {
        st.kind = kw == "break" ? StmtKind::kBreak : StmtKind::kContinue;
        ep.expect_end();
      } else if (kw == "generation") {  // transformers' assistant-mask marker: renders its body
        st.kind = StmtKind::kBlock;
        ep.expect_end();
        std::string e;
        st.body = parse_body({"endgeneration"}, e, depth + 1);
        if (e != "endgeneration") unclosed(st, "generation");
        expect_bare();
      } else {
        fail(p.line, p.col, "unknown or misplaced tag '" + kw + "'");
      }
      out.push_back(std::move(st));
    }
    end.clear();
    return out;
  }

  void parse_if(Stmt& st, ExprParser& ep, int depth) {
    st.kind = StmtKind::kIf;
    st.expr = ep.expression();
    ep.expect_end();
    std::string e;
    st.body = parse_body({"elif", "else", "endif"}, e, depth + 1);
    if (e == "elif") {
      Stmt nested;
      nested.line = cur_->line, nested.col = cur_->col;
      ExprParser ep2(cur_->tokens);
      ep2.expect_name();
      parse_if_tail(nested, ep2, depth + 1);
      st.else_body.push_back(std::move(nested));
      return;
    }
    if (e == "else") {
      expect_bare();
      st.else_body = parse_body({"endif"}, e, depth + 1);
    }
    if (e != "endif") unclosed(st, "if");
    expect_bare();
  }
  // An elif chain: its endif closes the whole chain.
  void parse_if_tail(Stmt& st, ExprParser& ep, int depth) {
    if (depth > kMaxNesting) fail(st.line, st.col, "blocks nested too deeply");
    parse_if(st, ep, depth);
  }

  // The end/else tag just read must have nothing after its keyword.
  void expect_bare() {
    ExprParser ep(cur_->tokens);
    ep.expect_name();
    ep.expect_end();
  }
  [[noreturn]] void unclosed(const Stmt& st, const char* what) {
    fail(st.line, st.col, fmt::format("'{}' block is never closed", what));
  }

  std::vector<Piece> pieces_;
  size_t i_ = 0;
  const Piece* cur_ = nullptr;
};

}  // namespace

std::shared_ptr<const Program> parse(const std::string& source) {
  // jinja2 normalizes newlines and drops one trailing newline (keep_trailing_newline=False).
  std::string src;
  src.reserve(source.size());
  for (size_t k = 0; k < source.size(); ++k) {
    if (source[k] == '\r') {
      src += '\n';
      if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
    } else {
      src += source[k];
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();
  Lexer lexer(src);
  Parser parser(lexer.run());
  auto prog = std::make_shared<Program>();
  prog->body = parser.parse_all();
  return prog;
}

}  // namespace kmq::chat
