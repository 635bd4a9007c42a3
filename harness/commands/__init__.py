"""One module per ``quantgate`` subcommand: parse the arguments, build the request, call the core.

The core (quant/) names its options by their own names; :func:`message` words its errors with the
flags that set them (``{keep_fpmm}`` -> ``--keep-full-precision-mm``), so CLI wording lives here."""
from __future__ import annotations

# core option name -> flag, where the flag is not "--" + the name with "-" for "_"
FLAGS = {"keep_fpmm": "--keep-full-precision-mm", "learned_iters": "--iters", "target": "--format",
         "from_gguf": "--preset-from-gguf"}


def flag(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def message(err) -> str:
    """The one line the CLI prints for a quant error: option names worded as flags."""
    from quant.errors import OptionError
    if isinstance(err, OptionError):
        text = err.worded(flag)
        return f"{err.path}: {text}" if err.path else text
    return str(err)
