"""A scripted LLM judge on 127.0.0.1 answering in the Ollama and OpenAI API shapes.

Script it through the handler class: `answers` (returned in order), or `answer_fn(prompt, body)`
(for concurrent clients, whose requests arrive in any order); `fail_first` (HTTP 503s to inject);
`delay_s` (each answer takes this long: a slow judge); `reject_schema` (HTTP 400 to any request
carrying a JSON schema, like a server without structured output). `max_in_flight` records the
most requests it served at once.
"""
import contextlib
import http.server
import json
import threading
import time


class JudgeHandler(http.server.BaseHTTPRequestHandler):
  # Class-level script, set by the fixture: answers to return in order, and failures to inject.
  answers: list = []
  answer_fn = None
  fail_first: int = 0
  delay_s: float = 0.0
  reject_schema: bool = False
  requests: list = []
  in_flight: int = 0
  max_in_flight: int = 0
  lock = threading.Lock()

  def log_message(self, *args):
    pass

  def do_POST(self):
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    cls = type(self)
    with cls.lock:
      cls.requests.append((self.path, body))
      cls.in_flight += 1
      cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
      failing = cls.fail_first > 0
      cls.fail_first -= failing
    try:
      time.sleep(cls.delay_s)
      refused = failing or (cls.reject_schema and ("format" in body or "response_format" in body))
      with cls.lock:
        if refused:
          answer = None
        elif cls.answer_fn is not None:
          prompt = body["prompt"] if "prompt" in body else body["messages"][0]["content"]
          answer = cls.answer_fn(prompt, body)
        else:
          answer = cls.answers.pop(0)
    finally:
      with cls.lock:  # before the reply: the client may send its next request as soon as it has it
        cls.in_flight -= 1
    if refused:
      self.send_response(503 if failing else 400)
      self.end_headers()
      return
    self._answer(body, answer)

  def _answer(self, body, answer):
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
  JudgeHandler.answer_fn, JudgeHandler.delay_s, JudgeHandler.reject_schema = None, 0.0, False
  JudgeHandler.in_flight = JudgeHandler.max_in_flight = 0
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), JudgeHandler)
  thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{httpd.server_address[1]}", JudgeHandler
  finally:
    httpd.shutdown()
    httpd.server_close()
