"""A schedule's written form: the token a failure prints and --streamorder-replay reads.

    v1.<policy>.s<seed>.<payload>        e.g. v1.random.s3.AgEDBQIBAQUy9Q

`payload` is base64url (no padding) of: one flags byte, the recorded decisions, and a
16-bit checksum (with the flips flag, the decisions are preceded by the number of
observations the run turned the other way and their ordinals, as varints). Each decision is written as one unsigned LEB128 varint; when the number
of options `n` of every decision is known (our Chooser records it), the pair (choice c,
options n) is written as the single number n(n-1)/2 + c, which still takes one byte while
n <= 15, so a replay can check n at every step and say where it diverged. Long bodies are
deflated when that is shorter. The checksum covers the header and the body: a truncated
or hand-edited token is refused with a reason instead of replaying something else. The
seed is written too (an empty field: no seed) so a replay reports the run it repeats.

Older forms are still read: `<policy>:<seed>` (rerun from the seed, choices not
recorded) and `cuda:<seed>` (the real-GPU backend, whose delays are decided by the seed
alone; `v1.cuda.s<seed>` is its versioned spelling). A token longer than MAX_INLINE goes
to a file (`Schedule.write`), and `@path` names that file.

Torch-free.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import math
import os
import re
import zlib
from pathlib import Path

from .policies import POLICIES

VERSION = "v1"
# The longest token printed on a command line; longer ones are written to a file.
MAX_INLINE = 200
BACKENDS = ("cuda",)  # "policies" whose runs are decided by the seed alone
_DEFLATED, _WITH_OPTIONS, _FLIPS = 1, 2, 4
_KNOWN_FLAGS = _DEFLATED | _WITH_OPTIONS | _FLIPS
FORMS = ("'v1.<policy>.s<seed>.<payload>' (what a failure prints), '@<file>' (a schedule "
         "written to a file), '<policy>:<seed>', or 'cuda:<seed>'")


class ReplayTokenError(ValueError):
    """A replay token that cannot be read; the message says what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Everything needed to run the same schedule again: pass as virtual_device(replay=).

    choices: every decision the run made, in order; None when only the seed is known (an
    old `policy:seed` token, or the cuda backend): the seed then decides them again.
    options: how many options each decision had (None: unknown); not part of equality,
    it only lets a replay notice divergence at the first step.
    flips: ordinals of the observations (query results, reuse decisions) the run turned
    the other way (scheduler.py), ascending."""

    policy: str
    seed: int | None
    choices: tuple[int, ...] | None
    options: tuple[int, ...] | None = dataclasses.field(default=None, compare=False)
    flips: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "flips", tuple(sorted(set(self.flips))))
        if any(f < 0 for f in self.flips):
            raise ValueError("Schedule.flips are observation ordinals, >= 0")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.options is not None:
            object.__setattr__(self, "options", tuple(self.options))
            if self.choices is None or len(self.options) != len(self.choices) or any(
                    not 0 <= c < n for c, n in zip(self.choices, self.options)):
                raise ValueError("Schedule.options must give, for every choice c, its "
                                 "number of options n > c")

    @property
    def backend(self) -> str:
        """'cuda' (the real-GPU backend) or 'sim' (the virtual device)."""
        return "cuda" if self.policy in BACKENDS else "sim"

    @property
    def token(self) -> str:
        """The written form, whatever its length (see replay_argument for a command line)."""
        if self.choices is None:
            return f"{self.policy}:{self.seed}"  # seed-only forms stay as they were
        header = _header(self.policy, self.seed)
        flags, body = _encode_body(self.choices, self.options)
        if self.flips:
            flags, body = flags | _FLIPS, _encode_flips(self.flips) + body
        check = _checksum(header, flags, body)
        if len(body) > 16:
            packed = _deflate(body)
            if len(packed) < len(body):
                flags, body = flags | _DEFLATED, packed
        payload = bytes([flags]) + body + check
        return f"{header}.{base64.urlsafe_b64encode(payload).decode('ascii').rstrip('=')}"

    def write(self, directory: str | os.PathLike, stem: str = "schedule",
              note: str = "") -> Path:
        """Write the token to `<directory>/<stem>-<hash>.schedule` (the hash makes the name
        unique per schedule) and return the path: `--streamorder-replay=@<path>` reads it.
        `note` (e.g. the test's node id) is written as a comment above the token."""
        token = self.token
        digest = hashlib.sha1(token.encode("ascii")).hexdigest()[:12]
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._")[-80:] or "schedule"
        path = Path(directory) / f"{safe}-{digest}.schedule"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["# pytest-streamorder schedule: replay with --streamorder-replay=@<this file>"]
        if note:
            lines += [f"# {line}" for line in note.splitlines()]
        n = len(self.choices) if self.choices is not None else 0
        flipped = f", observations flipped: {list(self.flips)}" if self.flips else ""
        lines += [f"# policy {self.policy}, seed {self.seed}, {n} recorded choices{flipped}",
                  token]
        path.write_text("\n".join(lines) + "\n", encoding="ascii")
        return path

    def replay_argument(self, directory: str | os.PathLike, stem: str = "schedule",
                        note: str = "") -> str:
        """What to pass to --streamorder-replay: the token itself when it is at most
        MAX_INLINE characters, else '@<path>' of a file written into `directory` (a path
        relative to the working directory when it lies under it)."""
        token = self.token
        if len(token) <= MAX_INLINE:
            return token
        path = self.write(directory, stem, note)
        try:
            shown = os.path.relpath(path)
            if shown.startswith(".."):
                shown = str(path.resolve())
        except ValueError:  # another drive (Windows)
            shown = str(path.resolve())
        return "@" + shown


def parse_replay(text: str) -> Schedule:
    """The Schedule a replay token (or '@file') describes. Raises ReplayTokenError saying
    what is wrong."""
    text = text.strip()
    if text.startswith("@"):
        return _parse_file(text[1:])
    if text.startswith("v") and "." in text:
        return _parse_versioned(text)
    policy, sep, seed = text.partition(":")
    if sep:
        if policy not in POLICIES + BACKENDS:
            raise ReplayTokenError(f"unknown policy {policy!r} in replay token {text!r}; "
                                   f"policies: {', '.join(POLICIES + BACKENDS)}")
        return Schedule(policy, _int(seed, "seed", text), None)
    raise ReplayTokenError(f"{text!r} is not a replay token; expected {FORMS}")


def _parse_file(name: str) -> Schedule:
    if not name:
        raise ReplayTokenError("'@' must be followed by the path of a schedule file")
    try:
        content = Path(name).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayTokenError(f"cannot read the schedule file {name!r}: {exc}") from None
    lines = [ln.strip() for ln in content.splitlines()]
    tokens = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(tokens) != 1:
        raise ReplayTokenError(f"the schedule file {name!r} should hold one token (and '#' "
                               f"comment lines); it holds {len(tokens)} other lines")
    if tokens[0].startswith("@"):
        raise ReplayTokenError(f"the schedule file {name!r} names another file; it should "
                               "hold the token itself")
    try:
        return parse_replay(tokens[0])
    except ReplayTokenError as exc:
        raise ReplayTokenError(f"in the schedule file {name!r}: {exc}") from None


def _parse_versioned(text: str) -> Schedule:
    parts = text.split(".")
    version = parts[0]
    if version != VERSION:
        raise ReplayTokenError(
            f"replay token {_short(text)} has version {version!r}; this pytest-streamorder "
            f"reads {VERSION!r} (a token written by another version?)")
    if len(parts) >= 2 and parts[1] in BACKENDS:
        if len(parts) != 3:
            raise ReplayTokenError(f"a {parts[1]} token is '{VERSION}.{parts[1]}.s<seed>', "
                                   f"got {_short(text)}")
        return Schedule(parts[1], _seed(parts[2], text), None)
    if len(parts) != 4:
        raise ReplayTokenError(f"replay token {_short(text)} has {len(parts)} dot-separated "
                               f"parts; expected 4: {VERSION}.<policy>.s<seed>.<payload>")
    _, policy, seed_field, payload_text = parts
    if policy not in POLICIES:
        raise ReplayTokenError(f"unknown policy {policy!r} in replay token {_short(text)}; "
                               f"policies: {', '.join(POLICIES + BACKENDS)}")
    seed = _seed(seed_field, text)
    payload = _b64(payload_text, text)
    if len(payload) < 3:
        raise ReplayTokenError(f"the payload of replay token {_short(text)} is too short "
                               f"({len(payload)} bytes): the token was cut off")
    flags, body, check = payload[0], payload[1:-2], payload[-2:]
    if flags & ~_KNOWN_FLAGS:
        raise ReplayTokenError(f"replay token {_short(text)} uses format flags {flags:#x} "
                               f"this version does not know")
    if flags & _DEFLATED:
        try:
            body = zlib.decompress(body, wbits=-15)
        except zlib.error:
            raise ReplayTokenError(f"the payload of replay token {_short(text)} is damaged "
                                   "(it does not inflate): the token was cut off or altered")
    header = _header(policy, seed)
    if _checksum(header, flags & ~_DEFLATED, body) != check:
        raise ReplayTokenError(f"replay token {_short(text)} fails its checksum: it was cut "
                               "off or altered (copy the whole token)")
    flips = ()
    if flags & _FLIPS:
        flips, body = _decode_flips(body, text)
    choices, options = _decode_body(body, bool(flags & _WITH_OPTIONS), text)
    return Schedule(policy, seed, choices, options, flips)


# --- encoding helpers --------------------------------------------------------------------

def _header(policy: str, seed: int | None) -> str:
    return f"{VERSION}.{policy}.s{'' if seed is None else seed}"


def _encode_body(choices, options) -> tuple[int, bytes]:
    out = bytearray()
    if options is not None:
        for c, n in zip(choices, options):
            _varint(n * (n - 1) // 2 + c, out)  # the pair (c, n), 0 <= c < n, as one number
        return _WITH_OPTIONS, bytes(out)
    for c in choices:
        _varint(c, out)
    return 0, bytes(out)


def _encode_flips(flips) -> bytes:
    out = bytearray()
    _varint(len(flips), out)
    previous = 0
    for f in flips:  # ascending: deltas stay small
        _varint(f - previous, out)
        previous = f
    return bytes(out)


def _decode_flips(body: bytes, text: str) -> tuple[tuple[int, ...], bytes]:
    values, at = [], 0
    count = None
    while count is None or len(values) < count:
        value, shift = 0, 0
        while True:
            if at >= len(body):
                raise ReplayTokenError(f"the payload of replay token {_short(text)} ends "
                                       "inside its flips: the token was cut off")
            byte = body[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if count is None:
            count = value
        else:
            values.append(value + (values[-1] if values else 0))
    return tuple(values), body[at:]


def _decode_body(body: bytes, with_options: bool, text: str):
    values, value, shift = [], 0, 0
    for byte in body:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            values.append(value)
            value = shift = 0
    if shift:
        raise ReplayTokenError(f"the payload of replay token {_short(text)} ends inside a "
                               "number: the token was cut off")
    if not with_options:
        return tuple(values), None
    choices, options = [], []
    for index in values:
        n = (1 + math.isqrt(1 + 8 * index)) // 2  # the largest n with n(n-1)/2 <= index
        choices.append(index - n * (n - 1) // 2)
        options.append(n)
    return tuple(choices), tuple(options)


def _varint(value: int, out: bytearray) -> None:
    if value < 0:
        raise ValueError(f"a recorded choice must be >= 0, got {value}")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _deflate(body: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: our checksum suffices
    return packer.compress(body) + packer.flush()


def _checksum(header: str, flags: int, body: bytes) -> bytes:
    crc = zlib.crc32(header.encode("ascii") + bytes([flags]) + body)
    return (crc & 0xFFFF).to_bytes(2, "big")


def _b64(payload: str, text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", payload):
        raise ReplayTokenError(f"the payload of replay token {_short(text)} has characters "
                               "outside base64url (A-Z a-z 0-9 _ -)")
    try:
        return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError):
        raise ReplayTokenError(f"the payload of replay token {_short(text)} is not valid "
                               "base64url: the token was cut off") from None


def _seed(field: str, text: str) -> int | None:
    if not field.startswith("s"):
        raise ReplayTokenError(f"replay token {_short(text)}: the seed field should be "
                               f"'s<seed>', got {field!r}")
    return None if field == "s" else _int(field[1:], "seed", text)


def _int(value: str, what: str, text: str) -> int:
    if not re.fullmatch(r"-?[0-9]+", value):
        raise ReplayTokenError(f"the {what} in replay token {_short(text)} must be an int, "
                               f"got {value!r}")
    return int(value)


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:40] + "..." + text[-12:])
