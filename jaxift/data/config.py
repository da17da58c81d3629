"""Defaults of `config.data`: every option the data pipeline reads (a locked config can
override any of them)."""
import ml_collections
from ml_collections.config_dict import placeholder


def default_synthetic_config() -> ml_collections.ConfigDict:
  """Built-in exactly checkable tasks (`jaxift.data.synthetic`), for source='synthetic'."""
  c = ml_collections.ConfigDict()
  c.num_train = 2000
  c.num_validation = 64
  c.num_test = 128
  c.seed = 0
  c.tasks = ''  # comma-separated task names; '' = all of synthetic.TASKS
  return c


def default_data_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # --- where the records come from ---
  c.source = 'files'  # 'files' | 'synthetic'
  # Comma-separated paths or globs (local or etils.epath, e.g. gs://): .json (array), .jsonl,
  # .parquet, .arrayrecord (jaxift/tools/preprocess.py output), or a `datasets.save_to_disk` folder.
  # A list of paths works too (from a config file).
  c.train_files = ml_collections.FieldReference('', field_type=object)
  # '' = carve validation and test out of train_files with split_fractions
  c.validation_files = ml_collections.FieldReference('', field_type=object)
  c.test_files = ml_collections.FieldReference('', field_type=object)
  c.split_fractions = (0.85, 0.05, 0.10)  # train/validation/test, used when only train_files is set
  c.split_seed = placeholder(int)  # None = file order (as in "LLMs from scratch"); int = shuffled
  c.hf_split = 'train'  # which split of a saved DatasetDict to read
  # where byte-offset indexes of JSON/JSONL/CSV files are cached ('' = $JAXIFT_CACHE/index)
  c.index_dir = ''
  # --- record format -> conversation ---
  c.format = 'auto'  # 'alpaca' | 'prompt_completion' | 'messages' | 'sharegpt' | 'auto'
  c.prompt_key = 'prompt'
  c.completion_key = 'completion'
  c.sep_token = ''  # text put between prompt and completion (prompt_completion format)
  c.messages_key = 'messages'
  c.conversations_key = 'conversations'
  c.system_prompt = ''  # added as a system turn when a conversation has none
  c.inverted = False  # instruction backtranslation: learn to produce the prompt from the response
  c.ftfy = False  # repair mojibake with ftfy (and NFC-normalize) before tokenization
  # --- template ---
  # A name ('alpaca' | 'phi3' | 'chatml' | 'tokenizer' | 'plain'), a user format string with named
  # fields and a final '{response}' (e.g. 'Q: {instruction}\nA: {response}'), or a list of these
  # for a FLAN-style mixture (one drawn per example with template_seed).
  c.template = ml_collections.FieldReference('alpaca', field_type=object)
  c.template_seed = 0
  # For template='tokenizer': a jinja chat template replacing the tokenizer's own (inline jinja, or
  # a path to a .jinja file; '' = the tokenizer's), and keyword arguments passed to every render
  # (training, tokenize.prompt_tokens for generation, evaluation): a dict, or its JSON/Python text
  # on the command line, e.g. --config.data.chat_template_kwargs="{'enable_thinking': False}".
  c.chat_template = ''
  c.chat_template_kwargs = ml_collections.FieldReference(None, field_type=object)
  # Reasoning blocks (<think>...</think> at the start of an assistant turn): a message's
  # reasoning_content is trained only with train_on_reasoning; the empty block a thinking template
  # inserts by itself only with train_on_empty_reasoning. Untrained blocks stay in the prompt.
  c.train_on_reasoning = False
  c.train_on_empty_reasoning = False
  c.reasoning_tags = ('<think>', '</think>')  # () = recognise no reasoning block
  # --- masking and length ---
  c.train_on_prompt = False
  # Which assistant messages are trained: 'assistant' (replies) and 'tool_call' (messages that
  # call tools). User, system and tool turns never are.
  c.roles_to_train = ('assistant', 'tool_call')
  c.train_on_last_turn_only = False  # train only the conversation's last trainable turn
  c.add_bos = placeholder(bool)  # None = what the tokenizer does by default
  c.max_seq_length = 512  # row length T of inputs/targets (an example has at most T+1 tokens)
  c.overlong = 'drop'  # 'drop' | 'truncate_prompt' | 'truncate'
  # Preference pairs (jaxift/data/preference.py): each record has `chosen` and `rejected`; a batch
  # of batch_size pairs has 2 * batch_size rows (row 2i chosen, 2i+1 rejected). The trainer sets
  # it when train.objective is not 'sft'.
  c.pairs = False
  c.skip_invalid = False  # skip (and count) malformed lines/records instead of failing
  # Records checked (parsed, templated, masks audited) before the model is built, so a bad record
  # or template fails in seconds with its file:line instead of at step N; 0 = off.
  c.precheck_records = 64
  # --- batching ---
  c.batching = 'max_length'  # 'max_length' | 'bucket' | 'packing'
  c.buckets = (64, 128, 256, 512)  # row lengths for 'bucket' (max_seq_length is always added)
  c.packing_bins = 0  # packing bins; 0 = 4 * batch_size
  c.packing_algorithm = 'first_fit'  # 'first_fit' | 'best_fit' (Grain's packers)
  c.shuffle = True
  # Training order and data state independent of the process count (jaxift/data/elastic.py): one
  # global order dealt to processes, so a run saved on P processes resumes on P' != P and trains
  # every example of the epoch exactly once. False = each process shuffles its own shard (the
  # order before issue 12); then a resume on another process count restarts the data order.
  c.elastic = True
  c.num_workers = 0  # Grain worker processes for tokenization (0 = in-process)
  c.worker_buffer_size = 2  # per-worker prefetch buffer (elements)
  c.prefetch_buffer_size = 8  # batches kept ready by a background thread (0 = none)
  c.synthetic = default_synthetic_config()
  # --- weighted mixture (FLAN-style); empty = train_files alone ---
  # config.data.mixture.<name> = ConfigDict(dict(train_files=..., weight=..., <any data key>=...))
  # (a ConfigDict, not a list: a locked config cannot freeze ConfigDicts inside a list).
  # Set the components in the experiment's get_config(), before the config is locked.
  c.mixture = ml_collections.ConfigDict()
  return c
