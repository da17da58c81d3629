"""Byte-offset indexes of text data files (JSON lines, JSON arrays, CSV/TSV): where each record
starts and ends, so a record is read by index without holding the file.

An index is built once per file, validated while it is built (every JSON line is parsed once, so a
malformed line is found before training), and cached as one `.npy` file under `index_dir`, keyed by
the file's path, size and mtime. It is written atomically (`jaxift.fileio`); a stale index (the
file changed) or an unreadable one (truncated, wrong magic) is rebuilt, never used. The cached
index is memory-mapped: a process touches only the pages of the records it reads.

Layout (int64): HEADER_LEN header entries, then starts[n], ends[n], then linenos[n] when the
records do not sit on consecutive lines.
"""
import array
import csv
import hashlib
import io
import json
import logging
import mmap
import os
import time
from typing import Any

from etils import epath
import numpy as np

from jaxift import fileio

MAGIC, VERSION = 0x6A786966_69647831, 1  # 'jxifidx1'
HEADER_LEN = 12
KINDS = {'jsonl': 1, 'json': 2, 'csv': 3, 'tsv': 4}
# header fields
_MAGIC, _VERSION, _SIZE, _MTIME, _N, _INVALID, _BAD_LINE, _BAD_START, _BAD_END, _LINENOS, _KIND, \
    _FIRST_LINE = range(HEADER_LEN)

log = logging.getLogger(__name__)


def default_index_dir() -> str:
  root = os.environ.get('JAXIFT_CACHE') or os.path.join(
      os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'jaxift')
  return os.path.join(root, 'index')


def file_stamp(path: str) -> tuple[int, int]:
  """(size, mtime in ns) of a local or epath file: the key a cached index must match."""
  if '://' in path:
    st = epath.Path(path).stat()
    return int(st.length), int(st.mtime * 1e9)
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


class Index:
  """starts/ends (byte offsets, end exclusive) and 1-based line numbers of the records of a file."""

  def __init__(self, array: np.ndarray):
    self.array = array
    h = array[:HEADER_LEN]
    self.n, self.invalid = int(h[_N]), int(h[_INVALID])
    self.bad_line, self.bad_span = int(h[_BAD_LINE]), (int(h[_BAD_START]), int(h[_BAD_END]))
    self.first_line = int(h[_FIRST_LINE])
    self.starts = array[HEADER_LEN:HEADER_LEN + self.n]
    self.ends = array[HEADER_LEN + self.n:HEADER_LEN + 2 * self.n]
    self._linenos = array[HEADER_LEN + 2 * self.n:] if h[_LINENOS] else None

  def lineno(self, i: int) -> int:
    return int(self._linenos[i]) if self._linenos is not None else self.first_line + i


def _index_path(path: str, index_dir: str) -> str:
  key = hashlib.sha1(os.path.abspath(path).encode() if '://' not in path
                     else path.encode()).hexdigest()[:16]
  name = os.path.basename(path.rstrip('/'))[:80]
  return os.path.join(index_dir or default_index_dir(), f'{name}.{key}.idx.npy')


def _pack(kind: str, stamp, starts, ends, linenos, invalid=0, bad=(0, 0, 0)) -> np.ndarray:
  n = len(starts)
  linenos = np.frombuffer(linenos, np.int64) if isinstance(linenos, array.array) else np.asarray(
      linenos, np.int64)
  first = int(linenos[0]) if n else 1
  consecutive = n == 0 or bool((linenos == np.arange(first, first + n)).all())
  header = np.array([MAGIC, VERSION, stamp[0], stamp[1], n, invalid, bad[0], bad[1], bad[2],
                     0 if consecutive else 1, KINDS[kind], first], np.int64)
  parts = [header, np.asarray(starts, np.int64), np.asarray(ends, np.int64)]  # (copies arrays)
  if not consecutive:
    parts.append(linenos)
  return np.concatenate(parts)


def _lines(f):
  """(start, end without the line break, line bytes) of each line of a binary file."""
  pos = 0
  for line in f:
    end = pos + len(line.rstrip(b'\r\n'))
    yield pos, end, line
    pos += len(line)


def _build_jsonl(path: str, f) -> tuple:
  starts, ends, linenos = array.array('q'), array.array('q'), array.array('q')  # 8 bytes each
  invalid, bad = 0, (0, 0, 0)
  for lineno, (start, end, line) in enumerate(_lines(f), 1):
    if not line.strip():
      continue
    try:
      json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
      invalid += 1
      if not bad[0]:
        bad = (lineno, start, end)
      continue
    starts.append(start)
    ends.append(end)
    linenos.append(lineno)
  return starts, ends, linenos, invalid, bad


def _build_json_array(path: str, data: bytes) -> tuple:
  text = data.decode('utf-8')
  decoder = json.JSONDecoder()
  ascii_only = len(text) == len(data)
  starts, ends, linenos = [], [], []
  char_pos, byte_pos = 0, 0  # running char -> byte conversion for non-ASCII files

  def to_byte(c: int) -> int:
    nonlocal char_pos, byte_pos
    if ascii_only:
      return c
    byte_pos += len(text[char_pos:c].encode('utf-8'))
    char_pos = c
    return byte_pos

  def fail(pos: int, msg: str):
    line = text.count('\n', 0, pos) + 1
    col = pos - (text.rfind('\n', 0, pos) + 1) + 1
    raise ValueError(f'{path}:{line}: malformed JSON ({msg} at column {col})')

  pos = text.index('[') + 1
  ws = ' \t\r\n'
  last_c, last_line = 0, 1  # line numbers counted incrementally
  while True:
    while pos < len(text) and text[pos] in ws:
      pos += 1
    if pos >= len(text):
      fail(pos, 'Expecting value')
    if text[pos] == ']' and not starts:
      break
    try:
      _, end = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
      fail(e.pos, e.msg)
    last_line += text.count('\n', last_c, pos)
    last_c = pos
    starts.append(to_byte(pos))
    ends.append(to_byte(end))
    linenos.append(last_line)
    pos = end
    while pos < len(text) and text[pos] in ws:
      pos += 1
    if pos < len(text) and text[pos] == ',':
      pos += 1
    elif pos < len(text) and text[pos] == ']':
      break
    else:
      fail(pos, "Expecting ',' delimiter")
  return starts, ends, linenos, 0, (0, 0, 0)


def _build_csv(path: str, f) -> tuple:
  """Rows end at a line break outside quotes (RFC 4180: a quote inside a field is doubled, so the
  quote count's parity tells). Row 0 is the header."""
  starts, ends, linenos = array.array('q'), array.array('q'), array.array('q')
  row_start, row_line, quotes = None, 0, 0
  for lineno, (start, end, line) in enumerate(_lines(f), 1):
    if row_start is None:
      if not line.strip():
        continue
      row_start, row_line, quotes = start, lineno, 0
    quotes += line.count(b'"')
    if quotes % 2 == 0:
      starts.append(row_start)
      ends.append(end)
      linenos.append(row_line)
      row_start = None
  if row_start is not None:
    raise ValueError(f'{path}:{row_line}: unterminated quoted field (a \'"\' is never closed)')
  return starts, ends, linenos, 0, (0, 0, 0)


def build(path: str, kind: str, stamp) -> np.ndarray:
  p = epath.Path(path)
  with p.open('rb') as f:
    if kind == 'json':
      starts, ends, linenos, invalid, bad = _build_json_array(path, f.read())
    elif kind == 'jsonl':
      starts, ends, linenos, invalid, bad = _build_jsonl(path, f)
    else:
      starts, ends, linenos, invalid, bad = _build_csv(path, f)
  return _pack(kind, stamp, starts, ends, linenos, invalid, bad)


def _valid(array, kind: str, stamp) -> bool:
  if array.ndim != 1 or len(array) < HEADER_LEN:
    return False
  h = array[:HEADER_LEN]
  n = int(h[_N])
  want = HEADER_LEN + 2 * n + (n if h[_LINENOS] else 0)
  return (int(h[_MAGIC]) == MAGIC and int(h[_VERSION]) == VERSION and int(h[_KIND]) == KINDS[kind]
          and (int(h[_SIZE]), int(h[_MTIME])) == tuple(stamp) and len(array) == want and n >= 0)


def load_or_build(path: str, kind: str, index_dir: str = '') -> tuple[Index, dict[str, Any]]:
  """The file's index, from the cache when its size and mtime still match, else built (and
  cached). -> (Index, {'built': bool, 'seconds': build time})."""
  stamp = file_stamp(path)
  cache = _index_path(path, index_dir)
  try:
    array = np.load(cache, mmap_mode='r', allow_pickle=False)
    try:  # reads are random: map the pages a record needs, not 64 kB around each one
      array._mmap.madvise(mmap.MADV_RANDOM)  # pylint: disable=protected-access
    except (AttributeError, OSError, ValueError):
      pass
    if _valid(array, kind, stamp):
      return Index(array), {'built': False, 'seconds': 0.0, 'index_file': cache}
    log.info('index %s is stale or corrupt: rebuilding', cache)
  except FileNotFoundError:
    pass
  except (OSError, ValueError) as e:  # truncated or not an .npy file: never trusted
    log.warning('index %s unreadable (%s): rebuilding', cache, e)
  t0 = time.perf_counter()
  array = build(path, kind, stamp)
  seconds = time.perf_counter() - t0
  buf = io.BytesIO()
  np.save(buf, array, allow_pickle=False)
  try:
    fileio.write_bytes(cache, buf.getvalue())
  except OSError as e:  # a read-only cache: the index still works, from memory
    log.warning('cannot cache the index of %s at %s (%s)', path, cache, e)
  log.info('indexed %s: %d records in %.1f s', path, int(array[_N]), seconds)
  return Index(array), {'built': True, 'seconds': seconds, 'index_file': cache}


def parse_csv_row(data: bytes, delimiter: str) -> list[str]:
  text = data.decode('utf-8')
  rows = list(csv.reader(io.StringIO(text, newline=''), delimiter=delimiter,
                         skipinitialspace=True))
  return rows[0] if rows else []
