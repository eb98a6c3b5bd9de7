// A small line editor for `kmq chat` on a terminal (termios raw mode, VT100 sequences):
// left/right, home/end, backspace, delete, up/down history, Ctrl-A/E/B/F/U/K/W/L, UTF-8
// aware (the cursor moves by code points; every code point is taken as one column wide).
// Chosen over libedit/readline: ~250 lines, no new dependency, no licence question, and
// kmq needs neither completion nor configurable key maps.
#pragma once
#include <termios.h>

#include <string>
#include <vector>

namespace kmq::tools {

// The editing state alone (no I/O), so the key handling is easy to reason about.
struct LineBuffer {
  std::string text;   // UTF-8
  size_t cursor = 0;  // byte offset, always at a code point boundary

  void insert(const std::string& s);
  void backspace();      // delete the code point before the cursor
  void erase();          // delete the code point under the cursor
  void left();
  void right();
  void home() { cursor = 0; }
  void end() { cursor = text.size(); }
  void kill_to_start();  // Ctrl-U
  void kill_to_end();    // Ctrl-K
  void kill_word();      // Ctrl-W: the word (and the spaces after it) before the cursor
  void set(const std::string& s) {
    text = s;
    cursor = s.size();
  }
};

class LineEditor {
 public:
  enum class Status { kLine, kEof, kInterrupt };
  // in_fd: a terminal to read keys from; out_fd: where the prompt and the line are drawn.
  LineEditor(int in_fd, int out_fd);
  ~LineEditor();
  // Reads one line (the terminal is in raw mode only while this runs). kEof: Ctrl-D on an
  // empty line or end of input; kInterrupt: Ctrl-C.
  Status read_line(const std::string& prompt, std::string& line);
  void add_history(const std::string& line);  // skips empty lines and repeats

 private:
  void refresh(const std::string& prompt);
  bool raw_on();
  void raw_off();
  int in_, out_;
  bool raw_ = false;
  termios saved_{};
  LineBuffer buf_;
  std::vector<std::string> history_;
};

}  // namespace kmq::tools
