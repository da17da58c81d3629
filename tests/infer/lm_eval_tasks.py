"""Tiny local lm-eval tasks over local JSONL files (offline): multiple choice, generate-until and
rolling log-likelihood. `write_tasks(folder)` writes the data and the YAMLs (data paths are
absolute, as lm-eval's `json` loader resolves them from the working directory) and returns the
folder to pass as `include_path`."""
import json
import pathlib

MC_DOCS = [
    {"question": "What color is the sky on a clear day?", "choices": ["blue", "green", "a shade of purple"], "answer": 0},
    {"question": "How many legs does a spider have?", "choices": ["six", "eight", "ten"], "answer": 1},
    {"question": "Which animal barks?", "choices": ["a cat", "a dog", "a fish"], "answer": 1},
    {"question": "What is frozen water called?", "choices": ["steam", "ice", "sand"], "answer": 1},
    {"question": "What do bees make?", "choices": ["honey", "milk", "silk thread"], "answer": 0},
]
GEN_DOCS = [
    {"question": "What is the capital of France?", "answer": "Paris"},
    {"question": "What is 2 plus 2?", "answer": "4"},
    {"question": "What is the opposite of hot?", "answer": "cold"},
]
PPL_DOCS = [
    {"text": "The quick brown fox jumps over the lazy dog. It was a sunny day in the park."},
    {"text": "Water boils at one hundred degrees Celsius at sea level, and freezes at zero."},
    {"text": "Paris is the capital of France; Berlin is the capital of Germany. " * 3},
]

TASKS = {
    "jaxift_mc": """task: jaxift_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "jaxift_gen": """task: jaxift_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer: The answer is"
doc_to_target: " {{{{answer}}}}"
generation_kwargs:
  until: ["\\n", "Question:"]
  do_sample: false
  max_gen_toks: 12
metric_list:
  - metric: exact_match
    ignore_case: true
    ignore_punctuation: true
""",
    "jaxift_ppl": """task: jaxift_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""",
}
DOCS = {"jaxift_mc": MC_DOCS, "jaxift_gen": GEN_DOCS, "jaxift_ppl": PPL_DOCS}


def write_tasks(folder: pathlib.Path) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  for name, yaml in TASKS.items():
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS[name]))
    (folder / f"{name}.yaml").write_text(yaml.format(data=json.dumps(str(data))))
  return folder
