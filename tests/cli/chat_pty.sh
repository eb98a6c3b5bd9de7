#!/usr/bin/env bash
# kmq chat on a pseudo-terminal (python3's pty module): the line editor (left, backspace,
# insert, Ctrl-A, Ctrl-K, Ctrl-W, Ctrl-U, UTF-8 backspace, up-arrow history), a streamed
# reply, Ctrl-C mid-reply returning to the prompt with the conversation intact, Ctrl-D
# exiting with status 0, and Ctrl-C at the prompt exiting. Uses the bundled 51M model
# (slow enough on a CPU that a Ctrl-C lands mid-reply) with the ChatML template.
set -uo pipefail
bin=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
model=$root/models/kmq-novels-51m-q4.kmq
if [ ! -f "$model" ]; then echo "SKIP: $model not found"; exit 0; fi
if ! command -v python3 >/dev/null; then echo "SKIP: python3 not found"; exit 0; fi
exec python3 - "$bin/kmq" "$model" <<'PY'
import os, pty, re, select, signal, sys, time

kmq, model = sys.argv[1], sys.argv[2]
fails = []

def check(name, ok):
    print(("ok   " if ok else "FAIL ") + name, flush=True)
    if not ok:
        fails.append(name)

class Chat:
    def __init__(self):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execv(kmq, [kmq, "chat", "-m", model, "--chat-template", "chatml", "-n", "400",
                           "--temp", "1", "--seed", "3", "-t", "1", "-c", "512"])
        self.out = b""

    def read(self, timeout):
        end = time.time() + timeout
        while time.time() < end:
            r, _, _ = select.select([self.fd], [], [], max(0.0, end - time.time()))
            if not r:
                break
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                return False
            if not data:
                return False
            self.out += data
            return True
        return True

    def wait_for(self, pattern, timeout=60, start=0):
        end = time.time() + timeout
        while time.time() < end:
            if re.search(pattern, self.out[start:]):
                return True
            if not self.read(min(1.0, end - time.time())):
                return bool(re.search(pattern, self.out[start:]))
        return False

    def send(self, data):
        os.write(self.fd, data)

    def exit_status(self, timeout=20):
        end = time.time() + timeout
        while time.time() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            self.read(0.2)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        return None

c = Chat()
check("the prompt appears", c.wait_for(rb"> ", 120))

def command(keys, expect):
    # Each key sequence is sent only once the editor has drawn its prompt (terminal raw):
    # type-ahead before that would go through the kernel's line discipline instead.
    mark = len(c.out)
    c.send(keys)
    ok = c.wait_for(expect, 30, mark)
    c.wait_for(expect + rb"[\s\S]*\r> ", 30, mark)
    return ok

# "/sxats", 3 x left, backspace (the x), "t": "/stats"
check("left arrow, backspace and insert edit the line", command(b"/sxats\x1b[D\x1b[D\x1b[D\x7ft\r", rb"turns 0"))
check("Ctrl-A and Ctrl-K", command(b"garbage\x01\x0b/stats\r", rb"turns 0"))
check("Ctrl-W, Ctrl-U and backspace over a UTF-8 character",
      command(b"foo bar\x17\x15\xc3\xa9\x7f/stats\r", rb"turns 0"))
check("up arrow recalls the history", command(b"\x1b[A\r", rb"turns 0"))
mark = len(c.out)
c.send(b"Tell me a long story about the sea.\r")
# the reply: at least 20 more bytes after the editor's final echo of the line
echoed = c.wait_for(rb"sea\.\x1b\[K\r*\n", 30, mark)
end_echo = c.out.find(b"\n", c.out.find(b"sea.\x1b[K", mark)) + 1
got_reply = echoed and c.wait_for(rb"[\s\S]{20,}", 120, end_echo)
check("a reply streams", got_reply)
time.sleep(0.5)
c.send(b"\x03")
check("Ctrl-C mid-reply stops it", c.wait_for(rb"\(stopped\)", 30, mark))
mark2 = c.out.find(b"(stopped)", mark)
check("... and returns to the prompt", mark2 >= 0 and c.wait_for(rb"\r> ", 30, mark2))
check("the stopped reply counts as a turn; the chat goes on", command(b"/stats\r", rb"turns 1"))
c.send(b"\x04")
check("Ctrl-D at the prompt exits with status 0", c.exit_status() == 0)

c = Chat()
check("the prompt appears again", c.wait_for(rb"> ", 120))
c.send(b"\x03")
check("Ctrl-C at the prompt exits", c.exit_status() is not None)

print(f"{13 - len(fails)} passed, {len(fails)} failed")
sys.exit(1 if fails else 0)
PY
