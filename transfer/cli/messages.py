"""Library errors in the command line's words.

The library's messages name Python calls and arguments
(`transfer.list_backbones()`, `weights=None`), which is right in Python and
wrong in a shell. `cli_message` rewrites them, at the command line's
boundary only, into commands and flags (`transfer backbones`,
`--weights none`), collapses the message to one line and drops object
reprs (`<_io.BytesIO object at 0x7f...>`).
"""

import re

# (pattern, replacement) for every command.
_WORDS = (
    (r"transfer\.list_backbones\(\)", "`transfer backbones`"),
    (r"transfer\.fetch_weights\('([^']*)'\)", r"`transfer weights fetch \1`"),
    (r"\bweights=None\b", "--weights none"),
    (r"\bskip_bad_files=True\b", "--skip-bad-files"),
    (r"<(?:[\w.]+\.)?(\w+) object at 0x[0-9a-fA-F]+>", r"a \1 object"),
)

def _flag(match):
    """The image model options as `transfer train` takes them:
    `lora_rank=2` -> `--lora-rank 2`, `pooling='max'` -> `--pooling max`,
    `` `drop_path` `` -> `` `--drop-path` ``."""
    flag = "--" + match.group(1).replace("_", "-")
    text = match.group(0)
    if text.startswith("`"):
        return f"`{flag}`"
    if "=" in text:
        value = match.group(2) if match.lastindex == 2 else ""
        return f"{flag} {value}"
    return flag


# (pattern, replacement) for one command's flags.
_COMMAND_WORDS = {
    "train": (
        (r"Pass a new run_dir\b", "Pass a new --output"),
        (r"Choose a writable run_dir\b", "Choose a writable --output"),
        (r"\b(pooling|lora_rank|drop_path|interpolation)='([^']*)'", _flag),
        (r"\b(pooling|lora_rank|drop_path|interpolation)=", _flag),
        (r"`(pooling|lora_rank|drop_path|interpolation)`", _flag),
        (r"\b(lora_rank|drop_path)(?= works with\b)", _flag),
        (r"\(load it with transfer\.load_model\)",
         "(use it with `transfer predict`, `evaluate` or `export`)"),
    ),
    "export": (
        (r"Choose a writable path\b",
         "Pass --output PATH in a writable folder"),
        (r"\bmax_accuracy_drop=", "--max-accuracy-drop "),
        (r"or more calibration images\b",
         "or more calibration images (--calibration-data DIR)"),
    ),
    "serve": (
        (r"\bport=(\d+)", r"--port \1"),
        (r"\bhost='([^']*)'", r"--host \1"),
    ),
}


def cli_message(error, command=None):
    """The one-line message `transfer COMMAND` prints for `error`.

    Example:

    >>> error = ValueError("Pass weights=None. See transfer.list_backbones().")
    >>> transfer.cli.messages.cli_message(error, "train")
    'Pass --weights none. See `transfer backbones`.'
    """
    text = " ".join(str(error).split()) or type(error).__name__
    for pattern, replacement in _WORDS + _COMMAND_WORDS.get(command, ()):
        text = re.sub(pattern, replacement, text)
    return text
