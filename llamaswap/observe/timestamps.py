"""
Timestamps as the configuration names them (C{logTimeFormat}), and the
RFC 3339 form of the metrics and events.
"""

from __future__ import annotations

from datetime import datetime, timezone


def _zone(moment: datetime, colon: bool, zulu: bool) -> str:
    offset = moment.utcoffset()
    seconds = int(offset.total_seconds()) if offset else 0
    if zulu and seconds == 0:
        return "Z"
    sign = "+" if seconds >= 0 else "-"
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"{sign}{hours:02d}{':' if colon else ''}{minutes:02d}"


def _fraction(moment: datetime, digits: int, trim: bool) -> str:
    text = f"{moment.microsecond:06d}000"[:digits]
    if trim:
        text = text.rstrip("0")
        return "." + text if text else ""
    return "." + text


def format_timestamp(name: str, when: float) -> str:
    """
    Render C{when} in one of the named formats of the Go original (its
    reference time is Mon Jan 2 15:04:05 MST 2006), in local time.
    """
    moment = datetime.fromtimestamp(when).astimezone()
    day_padded = f"{moment.day:2d}"
    zone_name = moment.tzname() or _zone(moment, False, False)
    clock = moment.strftime("%H:%M:%S")
    if name == "ansic":
        return moment.strftime(f"%a %b {day_padded} {clock} %Y")
    if name == "unixdate":
        return moment.strftime(f"%a %b {day_padded} {clock} ") + f"{zone_name} {moment.year}"
    if name == "rubydate":
        return moment.strftime(f"%a %b %d {clock} ") + f"{_zone(moment, False, False)} {moment.year}"
    if name == "rfc822":
        return moment.strftime("%d %b %y %H:%M ") + zone_name
    if name == "rfc822z":
        return moment.strftime("%d %b %y %H:%M ") + _zone(moment, False, False)
    if name == "rfc850":
        return moment.strftime(f"%A, %d-%b-%y {clock} ") + zone_name
    if name == "rfc1123":
        return moment.strftime(f"%a, %d %b %Y {clock} ") + zone_name
    if name == "rfc1123z":
        return moment.strftime(f"%a, %d %b %Y {clock} ") + _zone(moment, False, False)
    if name == "rfc3339":
        return moment.strftime(f"%Y-%m-%dT{clock}") + _zone(moment, True, True)
    if name == "rfc3339nano":
        return moment.strftime(f"%Y-%m-%dT{clock}") + _fraction(moment, 9, True) + _zone(moment, True, True)
    if name == "kitchen":
        return f"{moment.hour % 12 or 12}:{moment.minute:02d}{'PM' if moment.hour >= 12 else 'AM'}"
    stamp = moment.strftime(f"%b {day_padded} {clock}")
    if name == "stamp":
        return stamp
    if name == "stampmilli":
        return stamp + _fraction(moment, 3, False)
    if name == "stampmicro":
        return stamp + _fraction(moment, 6, False)
    if name == "stampnano":
        return stamp + _fraction(moment, 9, False)
    raise ValueError(f"unknown time format {name!r}")


_second_cache: tuple[int, str] = (-1, "")


def rfc3339(when: float) -> str:
    """
    C{when} in UTC as C{2026-11-29T14:03:05.123456Z}; the part up to the
    second is formatted once per second.
    """
    global _second_cache
    second = int(when)
    if _second_cache[0] != second:
        _second_cache = (second, datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second_cache[1]}.{int((when - second) * 1_000_000):06d}Z"


def rfc3339_second(when: float) -> str:
    """
    C{when} in UTC to the second, as C{2026-11-29T14:03:05Z}.
    """
    rfc3339(when)
    return _second_cache[1] + "Z"


def parse_rfc3339(text: str) -> float | None:
    """
    An RFC 3339 timestamp (C{Z} or an offset, optional fraction) as seconds
    since the epoch, or C{None} when it is not one.
    """
    text = text.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None or "T" not in text.upper():
        return None
    return moment.timestamp()
