"""The one exception type for bad input; its message names the file, row or config key at fault."""


class InputError(ValueError):
    """Input the workflow cannot use: a corrupt image, an empty class, a wrong config key, a missing file."""
