"""A scripted LLM judge on 127.0.0.1 answering in the Ollama and OpenAI API shapes."""
import contextlib
import http.server
import json
import threading


class JudgeHandler(http.server.BaseHTTPRequestHandler):
  # Class-level script, set by the fixture: answers to return in order, and failures to inject.
  answers: list = []
  fail_first: int = 0
  requests: list = []

  def log_message(self, *args):
    pass

  def do_POST(self):
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    cls = type(self)
    cls.requests.append((self.path, body))
    if cls.fail_first > 0:
      cls.fail_first -= 1
      self.send_response(503)
      self.end_headers()
      return
    answer = cls.answers.pop(0)
    if self.path == "/api/chat":
      payload = {"model": body["model"], "message": {"role": "assistant", "content": answer},
                 "done": True}
    elif self.path == "/api/generate":
      payload = {"model": body["model"], "response": answer, "done": True}
    elif self.path == "/v1/chat/completions":
      payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
    else:
      self.send_response(404)
      self.end_headers()
      return
    data = json.dumps(payload).encode()
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)


@contextlib.contextmanager
def judge_server():
  """Yields (base URL, handler class); set `answers`/`fail_first` on the class to script it."""
  JudgeHandler.answers, JudgeHandler.requests, JudgeHandler.fail_first = [], [], 0
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), JudgeHandler)
  thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{httpd.server_address[1]}", JudgeHandler
  finally:
    httpd.shutdown()
    httpd.server_close()
