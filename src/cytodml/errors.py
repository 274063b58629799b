"""The one exception type for bad input; its message names the file, row or config key at fault."""


class InputError(ValueError):
    """Input the workflow cannot use: a corrupt image, an empty class, a wrong config key, a missing file."""


def require_columns(table, columns, what: str) -> None:
    """Raise :class:`InputError` if ``table`` lacks any of ``columns``, naming ``what`` the table is and the ones
    missing."""
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise InputError(f"{what}: missing column(s) {missing}")
