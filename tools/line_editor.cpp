// The line editor of `kmq chat` (see line_editor.h): a key loop over termios raw mode.
#include "line_editor.h"

#include <unistd.h>

#include <cerrno>
#include <fmt/format.h>

namespace kmq::tools {

namespace {

bool is_cont(char c) { return (static_cast<unsigned char>(c) & 0xc0) == 0x80; }

size_t code_points(const std::string& s, size_t from, size_t to) {
  size_t n = 0;
  for (size_t i = from; i < to; ++i) n += is_cont(s[i]) ? 0 : 1;
  return n;
}

void write_all(int fd, const std::string& s) {
  size_t done = 0;
  while (done < s.size()) {
    const ssize_t k = ::write(fd, s.data() + done, s.size() - done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return;
    done += size_t(k);
  }
}

// One byte from fd; -1 at end of input or on error.
int read_byte(int fd) {
  unsigned char c;
  for (;;) {
    const ssize_t k = ::read(fd, &c, 1);
    if (k == 1) return c;
    if (k < 0 && errno == EINTR) continue;
    return -1;
  }
}

}  // namespace

void LineBuffer::insert(const std::string& s) {
  text.insert(cursor, s);
  cursor += s.size();
}

void LineBuffer::left() {
  while (cursor > 0) {
    --cursor;
    if (!is_cont(text[cursor])) break;
  }
}

void LineBuffer::right() {
  if (cursor >= text.size()) return;
  ++cursor;
  while (cursor < text.size() && is_cont(text[cursor])) ++cursor;
}

void LineBuffer::backspace() {
  const size_t end = cursor;
  left();
  text.erase(cursor, end - cursor);
}

void LineBuffer::erase() {
  const size_t start = cursor;
  right();
  text.erase(start, cursor - start);
  cursor = start;
}

void LineBuffer::kill_to_start() {
  text.erase(0, cursor);
  cursor = 0;
}

void LineBuffer::kill_to_end() { text.erase(cursor); }

void LineBuffer::kill_word() {
  size_t i = cursor;
  while (i > 0 && text[i - 1] == ' ') --i;
  while (i > 0 && text[i - 1] != ' ') --i;
  text.erase(i, cursor - i);
  cursor = i;
}

LineEditor::LineEditor(int in_fd, int out_fd) : in_(in_fd), out_(out_fd) {}

LineEditor::~LineEditor() { raw_off(); }

bool LineEditor::raw_on() {
  if (::tcgetattr(in_, &saved_) != 0) return false;
  termios t = saved_;
  t.c_iflag &= ~tcflag_t(BRKINT | ICRNL | INPCK | ISTRIP | IXON);
  t.c_lflag &= ~tcflag_t(ECHO | ICANON | IEXTEN | ISIG);  // Ctrl-C arrives as a byte
  t.c_cflag |= CS8;
  t.c_cc[VMIN] = 1;
  t.c_cc[VTIME] = 0;
  if (::tcsetattr(in_, TCSADRAIN, &t) != 0) return false;
  raw_ = true;
  return true;
}

void LineEditor::raw_off() {
  if (raw_) ::tcsetattr(in_, TCSADRAIN, &saved_);
  raw_ = false;
}

void LineEditor::add_history(const std::string& line) {
  if (line.empty() || (!history_.empty() && history_.back() == line)) return;
  history_.push_back(line);
}

void LineEditor::refresh(const std::string& prompt) {
  std::string s = "\r" + prompt + buf_.text + "\x1b[K";
  const size_t back = code_points(buf_.text, buf_.cursor, buf_.text.size());
  if (back > 0) s += fmt::format("\x1b[{}D", back);
  write_all(out_, s);
}

LineEditor::Status LineEditor::read_line(const std::string& prompt, std::string& line) {
  buf_ = LineBuffer{};
  if (!raw_on()) {  // not a terminal after all: plain reading
    line.clear();
    int c;
    while ((c = read_byte(in_)) >= 0 && c != '\n') line += char(c);
    return c < 0 && line.empty() ? Status::kEof : Status::kLine;
  }
  size_t hist = history_.size();  // history_.size() = the line being edited
  std::string editing;
  auto recall = [&](size_t i) {
    if (hist == history_.size()) editing = buf_.text;
    hist = i;
    buf_.set(hist == history_.size() ? editing : history_[hist]);
  };
  refresh(prompt);
  Status st = Status::kLine;
  for (;;) {
    const int c = read_byte(in_);
    if (c < 0) {
      st = buf_.text.empty() ? Status::kEof : Status::kLine;
      break;
    }
    if (c == '\r' || c == '\n') break;
    if (c == 3) {  // Ctrl-C
      st = Status::kInterrupt;
      break;
    }
    if (c == 4) {  // Ctrl-D: end of input on an empty line, else delete
      if (buf_.text.empty()) {
        st = Status::kEof;
        break;
      }
      buf_.erase();
    } else if (c == 1) {
      buf_.home();
    } else if (c == 5) {
      buf_.end();
    } else if (c == 2) {
      buf_.left();
    } else if (c == 6) {
      buf_.right();
    } else if (c == 0x7f || c == 8) {
      buf_.backspace();
    } else if (c == 0x15) {
      buf_.kill_to_start();
    } else if (c == 0x0b) {
      buf_.kill_to_end();
    } else if (c == 0x17) {
      buf_.kill_word();
    } else if (c == 0x0c) {
      write_all(out_, "\x1b[H\x1b[2J");
    } else if (c == 0x10 || c == 0x0e) {  // Ctrl-P / Ctrl-N
      if (c == 0x10 && hist > 0) recall(hist - 1);
      if (c == 0x0e && hist < history_.size()) recall(hist + 1);
    } else if (c == 0x1b) {  // ESC [ X, ESC [ n ~, ESC O X
      const int a = read_byte(in_);
      if (a != '[' && a != 'O') continue;
      int b = read_byte(in_);
      int num = 0;
      while (b >= '0' && b <= '9') {
        num = num * 10 + (b - '0');
        b = read_byte(in_);
      }
      if (b == '~') {
        if (num == 1 || num == 7) buf_.home();
        if (num == 4 || num == 8) buf_.end();
        if (num == 3) buf_.erase();
      } else if (b == 'A') {
        if (hist > 0) recall(hist - 1);
      } else if (b == 'B') {
        if (hist < history_.size()) recall(hist + 1);
      } else if (b == 'C') {
        buf_.right();
      } else if (b == 'D') {
        buf_.left();
      } else if (b == 'H') {
        buf_.home();
      } else if (b == 'F') {
        buf_.end();
      }
    } else if (c >= 0x20) {  // a character: one byte, or a whole UTF-8 sequence
      std::string ch(1, char(c));
      const size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
      while (ch.size() < need) {
        const int d = read_byte(in_);
        if (d < 0) break;
        ch += char(d);
      }
      buf_.insert(ch);
    }
    refresh(prompt);
  }
  raw_off();
  write_all(out_, "\r\n");
  line = buf_.text;
  return st;
}

}  // namespace kmq::tools
