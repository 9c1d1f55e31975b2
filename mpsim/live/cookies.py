"""The converter's cookie secret file (``mpsim converter serve --cookie-secret FILE``).

One secret per line, hexadecimal, at least 16 bytes each: the first line makes and checks cookies
(RFC 8803 6.2.7), the following lines are previous secrets, whose cookies are answered with a
fresh one (Error 3) instead of Error 32. Kept across restarts and shared by every worker, so a
restart costs no client its cookie. Rotation (:func:`rotate_cookie_secret`, ``mpsim converter
rotate-secret FILE``) puts a new secret in front and keeps the previous one; the daemon re-reads
the file on SIGHUP. The file is created with mode 0600 when missing and refused when group or
others have any access to it: whoever reads it can mint cookies for every address.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from mpsim.errors import MpsimError

SECRET_BYTES = 32
MIN_SECRET_BYTES = 16
#: Secrets kept by a rotation: the new one and its predecessor (older cookies get Error 32).
KEPT_SECRETS = 2


class CookieSecretError(MpsimError):
    """The cookie secret file cannot be used; the message says why and what to do."""


def _check_mode(path: Path) -> None:
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise CookieSecretError(f"--cookie-secret {path}: not a regular file")
    if mode & 0o077:
        raise CookieSecretError(f"--cookie-secret {path} is accessible to group or others (mode {mode & 0o777:04o}): "
                                f"whoever reads it can forge cookies; run `chmod 600 {path}`")


def _create(path: Path, secrets_: list[bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("".join(secret.hex() + "\n" for secret in secrets_))


def load_cookie_secrets(path: str | Path) -> tuple[bytes, ...]:
    """The secrets in ``path`` (current first); a missing file is created (mode 0600) with one."""
    path = Path(path)
    if not path.exists():
        try:
            _create(path, [secrets.token_bytes(SECRET_BYTES)])
        except FileExistsError:
            pass  # another worker or daemon created it just now: read theirs
        except OSError as err:
            raise CookieSecretError(f"--cookie-secret {path}: cannot create it: {err.strerror}") from None
    _check_mode(path)
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            raise CookieSecretError(f"--cookie-secret {path} line {number}: not hexadecimal") from None
        if len(secret) < MIN_SECRET_BYTES:
            raise CookieSecretError(f"--cookie-secret {path} line {number}: {len(secret)} bytes, "
                                    f"need at least {MIN_SECRET_BYTES}")
        found.append(secret)
    if not found:
        raise CookieSecretError(f"--cookie-secret {path} holds no secret")
    return tuple(found)


def rotate_cookie_secret(path: str | Path) -> tuple[bytes, ...]:
    """A new current secret in ``path``, the old current one kept as previous; atomic (rename).
    Running daemons pick it up on SIGHUP."""
    path = Path(path)
    old = list(load_cookie_secrets(path))
    new = [secrets.token_bytes(SECRET_BYTES), *old][:KEPT_SECRETS]
    temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
    temporary.unlink(missing_ok=True)
    _create(temporary, new)
    os.replace(temporary, path)
    return tuple(new)


def rotate_main(argv: list[str] | None = None, *, prog: str = "mpsim converter rotate-secret") -> int:
    """``mpsim converter rotate-secret FILE``: 0 done, 2 with one line on stderr otherwise."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog=prog, description="Put a new cookie secret in front of FILE and keep the "
                                                            "previous one; then send SIGHUP to the converter.")
    parser.add_argument("file")
    args = parser.parse_args(argv)
    try:
        rotate_cookie_secret(args.file)
    except CookieSecretError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0
