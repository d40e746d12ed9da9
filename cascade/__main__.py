"""``python -m cascade``: the core library has no command that runs models; those live in ``python -m engines``."""

import sys

if __name__ == "__main__":
    command = " ".join(sys.argv[1:2]) or "predict"
    print(
        f"error: the commands that run the models live in 'python -m engines' (e.g. python -m engines {command} …)",
        file=sys.stderr,
    )
    raise SystemExit(2)
