"""Layer patterns as ``--layers`` takes them: an exact name, a glob, or ``re:REGEX``.

Canonical layer names (``text.layer.3``) use shell globs, where ``*`` also crosses dots
(``text.*`` is every text layer). Module paths (``blocks.3.attn``) are matched with
``dotted=True``: ``*`` stays within one dotted component and ``**`` crosses them, so
``blocks.*`` is the blocks themselves, not every submodule inside them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Any

from repalign._suggest import did_you_mean


def compile_pattern(pattern: str, *, dotted: bool = False) -> re.Pattern[str]:
    """The regex a pattern stands for (use ``fullmatch``); a bad ``re:`` is a ValueError."""
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error as exc:
            raise ValueError(f"layer pattern {pattern!r} is not a valid regex: {exc}") from None
    return re.compile(_dotted_glob(pattern) if dotted else fnmatch.translate(pattern))


def match_each(
    available: Sequence[str],
    patterns: Sequence[str],
    *,
    dotted: bool = False,
    what: str = "layer",
    where: str = "",
    listing: str = "",
    shown: Sequence[str] | None = None,
    shown_as: str = "There are",
) -> list[list[str]]:
    """Per pattern, the names of ``available`` it matches (in their order).

    A pattern that matches nothing raises ValueError with the closest names ("did you
    mean"), the first of ``shown`` (default: ``available``) introduced by ``shown_as``,
    and ``listing`` (how to list them all).
    """
    regexes = [compile_pattern(p, dotted=dotted) for p in patterns]  # every regex checked first
    out = []
    for pattern, regex in zip(patterns, regexes, strict=True):
        hits = [name for name in available if regex.fullmatch(name)]
        if not hits:
            hint = did_you_mean(pattern.removeprefix("re:"), available, cutoff=0.4)
            some = list(available if shown is None else shown)
            listed = ", ".join(some[:12]) + (" ..." if len(some) > 12 else "")
            raise ValueError(
                f"layer pattern {pattern!r} matches no {what}{f' of {where}' if where else ''}."
                f"{hint} {shown_as}: {listed}" + (f"; {listing}" if listing else "")
            )
        out.append(hits)
    return out


def select(available: Sequence[str], patterns: Sequence[str], **how: Any) -> list[str]:
    """The names of ``available`` matching any of ``patterns``, in ``available``'s order
    (:func:`match_each`'s checks and messages; ``how`` are its keyword options)."""
    chosen = {name for hits in match_each(available, patterns, **how) for name in hits}
    return [name for name in available if name in chosen]


def _dotted_glob(pattern: str) -> str:
    """A module-path glob as a regex: ``*`` within a dotted component, ``**`` across,
    ``?`` one character, ``[...]`` a class (``[!...]`` negated)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        c = pattern[i]
        end = pattern.find("]", i + 2) if c == "[" else -1
        if c == "*":
            out.append(r"[^.]*")
        elif c == "?":
            out.append(r"[^.]")
        elif end != -1:  # a character class, copied with ! turned into ^
            body = pattern[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)
