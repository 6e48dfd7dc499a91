"""The one exception type the tokenizers raise for bad input (files, ids, sizes)."""


class TokenizerError(ValueError):
    """Bad input to a tokenizer: a corrupt file, an id from the wrong range, a size over a limit.

    A subclass of ValueError so callers that already catch ValueError keep working.
    """
