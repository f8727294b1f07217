"""Bounds of evaluations (every input has one)."""
MAX_RUN_ITEMS = 2000  # items in one run's data source
MAX_FILE_CONTENT_BYTES = 2 * 1024 * 1024  # a run's inline `file_content`, serialized
MAX_SAMPLE_TOKENS = 1024  # max_completion_tokens of a sampled answer or a judge's
DEFAULT_SAMPLE_TOKENS = 128
