"""ISO 8601 text for millisecond Unix times, without a clock.

Pure arithmetic (Howard Hinnant's ``civil_from_days``), so the core can name a time in
an error message without importing ``datetime`` (the core may not, since ``datetime``
can read the clock: ``tests/test_exports.py``). Tested against ``datetime``.
"""

from __future__ import annotations

__all__ = ["format_age", "iso8601_utc"]


def iso8601_utc(ms: int) -> str:
    """Return ``ms`` (milliseconds since 1970-01-01Z) as ``YYYY-MM-DDTHH:MM:SS[.mmm]Z``."""
    seconds, millis = divmod(ms, 1000)
    days, second_of_day = divmod(seconds, 86_400)
    z = days + 719_468  # days since 0000-03-01 (proleptic Gregorian)
    era = z // 146_097
    doe = z - era * 146_097  # day of the 400-year era, 0..146096
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)  # day of the March-based year
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    hour, rest = divmod(second_of_day, 3600)
    minute, second = divmod(rest, 60)
    frac = f".{millis:03d}" if millis else ""
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{frac}Z"


def format_age(delta_ms: int) -> str:
    """Return a signed duration as text: ``"3 h 2 min ago"`` or ``"in 5 s"``."""
    future = delta_ms < 0
    seconds = abs(delta_ms) // 1000
    parts = []
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count, seconds = divmod(seconds, size)
            parts.append(f"{count} {unit}")
        if len(parts) == 2:
            break
    if len(parts) < 2 and (seconds or not parts):
        parts.append(f"{seconds} s")
    text = " ".join(parts)
    return f"in {text}" if future else f"{text} ago"
