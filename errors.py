"""The exceptions library modules raise; each CLI's main() prints one of them as its one-line error."""


class CorpusError(ValueError):
    """Bad input in the corpus or its caches: the message names the file/row and what was expected."""
