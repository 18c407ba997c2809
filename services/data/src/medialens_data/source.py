"""A job's input table: its format and compression detected by content, its size estimated, and its rows
exposed to DuckDB under a name.

CSV and JSON lines are parsed by DuckDB in one streamed pass, either into a table (`materialize=True`:
the jobs that read the rows several times, whose parse errors then surface before any work) or as a view
read again by each query (a conversion reads it once). Parquet is always a view: it is read in place.
A ragged or undecodable file fails with `UnsupportedInput`, naming the line when DuckDB does; a CSV's
line of white space among its rows, which DuckDB reads as a row of one field, is skipped
(`without_white_lines`). A CSV may be UTF-8, UTF-16 (with its byte-order mark), Latin-1 or Windows-1252;
JSON lines are UTF-8, as JSON is. The
`jsonl` format also reads a JSON array of objects (`[{...}, {...}]`, as many exports write), one row an
object, and each key is a column however few objects hold it, up to `UNFOLDED_KEYS_MAX` keys (DuckDB
folds the objects into one MAP column past 200 keys, or when most keys are rare: `_records_folded`; past
that many keys, as in objects keyed by ids, they stay one MAP column `json`).

Column types are guessed from a sample of rows (DuckDB's 20,480). A later row that does not fit them
(text where numbers were; in JSON also a key first met there, an object or an array) makes the types be
guessed again from every row (`resample`). A later value DuckDB can cast it casts without a word, though
(DuckDB's issues 25786 and 25824): in a CSV, 1.5 in a column of integers read 2, 007 read 7 and a time in
a column of dates was dropped; in JSON, 1.5 among integers read 2, `true` among numbers 1.0 and 7 among
booleans true. Those columns are read again as text to check every value (`_sampled_types_hold`), and a
value that does not fit makes the types be guessed from every row. A CSV's dates that read as well day
first as month first (`01/02/2024`), which DuckDB reads in whichever order it tries first, are text unless
a value tells the order (`_ambiguous_dates`). A column of numbers, dates or booleans that holds null
markers (`NA`, `N/A`, `null`, `-`...: `NULL_MARKERS`) reads them as NULL; a text column keeps them as its
values (`_marked_columns`).

Windows-1252 (what spreadsheets on Windows export: Latin-1 but for curly quotes, dashes, the euro sign and a
few more in bytes 0x80-0x9F, which Latin-1 leaves to control characters) is read from a UTF-8 copy made here
in the job's scratch directory: DuckDB reads UTF-8, UTF-16 and Latin-1 itself, and other encodings only
through its `encodings` extension, which it downloads at first use (the workers run without internet, and
their connections load no extension). The copy is made only once DuckDB has refused the text as Latin-1.
So is UTF-16 with a big-endian byte-order mark (FE FF): DuckDB's `utf-16` is little-endian only, and read
such a file without a word as one row-less column of mojibake.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import re
import shutil
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import duckdb

from medialens_data.engine import Watchdog, count_label, ident, literal, reason
from medialens_shared.errors import (
    InputNotFound,
    MediaDecodeError,
    PermanentJobError,
    UnsupportedInput,
    disk_full,
)
from medialens_shared.sniff import TextEncoding, text_encoding

Format = Literal["csv", "parquet", "jsonl"]
Compression = Literal["none", "gzip", "zstd"]
#: What DuckDB says of a CSV that is not UTF-8, or not Latin-1, where it reads.
_NOT_UTF8 = "not utf-8 encoded"
_NOT_LATIN1 = "not latin-1 encoded"
#: DuckDB's error for a field that opens with the quote character and never closes it.
_UNTERMINATED_QUOTE = "unterminated quote"
#: What DuckDB says of a JSON value that does not fit the type guessed for its key (see `resample`), and of
#: an object that repeats a key, which no guess fixes.
_JSON_TRANSFORM = "JSON transform error"
_JSON_DUPLICATE_KEY = "has duplicate key"
#: How a CSV's text is read: as `medialens_shared.sniff.text_encoding` tells it, or from a UTF-8 copy of
#: it read as Windows-1252 or as big-endian UTF-16 (`_COPIED`).
Reading = TextEncoding | Literal["windows-1252", "utf-16-be"]
#: The encodings read from a UTF-8 copy, each with its name in messages.
_COPIED: dict[Reading, str] = {"windows-1252": "Windows-1252", "utf-16-be": "big-endian UTF-16"}
#: Bytes transcoded at a time into the UTF-8 copy.
_COPY_CHUNK = 1 << 20

#: Leading bytes read to detect the format and estimate the row count.
HEAD_BYTES = 64 * 1024

#: DuckDB's errors that mean "this file is not a readable table" (rather than a bug or a bad query).
READ_ERRORS: tuple[type[Exception], ...] = (
    duckdb.InvalidInputException,
    duckdb.ConversionException,
    duckdb.IOException,
    duckdb.NotImplementedException,
)

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PARQUET_MAGIC = b"PAR1"
_DELIMITERS = (",", ";", "\t", "|")
#: The start of a JSON array of objects (or an empty one): `[`, blanks, then `{` or `]`. A CSV header such
#: as `[id],[name]` does not match.
_JSON_ARRAY = re.compile(rb"\[\s*[{\]]")
#: A JSON array whose first item is an array (`[[1, 2], [3, 4]]`): rows without column names.
_JSON_ROWS = re.compile(rb"\[\s*\[")
#: A line's end: LF, CRLF, or CR alone (the classic Mac's).
_LINE_ENDS = re.compile(rb"\r\n|\n|\r")
#: A ragged or damaged CSV must fail, never lose or pad rows: no skipped leading lines, no null padding,
#: no ignored errors, strict quoting.
_CSV_STRICT = "strict_mode=true, null_padding=false, ignore_errors=false"
#: A CSV's line of nothing but white space (`without_white_lines`), by whether a tab is white space in it
#: (spaces alone are where the tab is the delimiter): as a text's first line, before its line end; as a
#: later line, from the line end before it (a search for a line end is quick, one for the start of a
#: line is not: 0.14 s against 1.5 s for 92 MB); as the text's last line, which has no line end. Lines
#: end in LF or CRLF, or in CR alone (`WhiteLines.newline`: the classic Mac's, Excel's "CSV (Macintosh)").
_WHITE_LINES = {
    (tabs, newline): (
        re.compile(rb"%s+(?=%s)" % (white, ends)),
        re.compile(rb"%s%s+(?=%s)" % (newline, white, ends)),
        re.compile(rb"%s+%s" % (white, rb"\r?" if newline == b"\n" else b"")),
    )
    for tabs, white in ((True, rb"[ \t]"), (False, rb" "))
    for newline, ends in ((b"\n", rb"\r?\n"), (b"\r", rb"\r"))
}
#: The names of a CSV's copies with its lines of white space empty (`Source.blanked_copy`), in the job's
#: scratch directory: of the text DuckDB reads in its own encoding (UTF-8, Latin-1), byte for byte, and
#: of a UTF-8 copy of it (Windows-1252, UTF-16).
_BLANKED = ("input.blanked.csv", "input.utf-8.blanked.csv")


@dataclass(frozen=True, slots=True)
class WhiteLines:
    """How a CSV's lines of white space among its rows are told (`without_white_lines`): by the characters
    that are white space in it (a tab is the delimiter of a tab-separated file), outside its quoted fields,
    which are told by the quote and escape characters it is read with (none: every line is a line)."""

    tabs: bool
    quote: bytes | None = None
    escape: bytes | None = None
    #: The byte its lines end in: LF (CRLF too), or CR alone.
    newline: bytes = b"\n"


@dataclass(frozen=True, slots=True)
class Source:
    """The input file, what it holds, and roughly how many rows (None when that cannot be told early)."""

    path: Path
    format: Format
    compression: Compression
    estimated_rows: int | None
    #: The text's encoding as its first bytes tell (`medialens_shared.sniff.text_encoding`); a CSV that
    #: turns out not to be UTF-8 further on is read again as Latin-1, then as Windows-1252 (`reread`).
    encoding: Reading = "utf-8"
    #: JSON whose rows are the objects of one array (`[{...}, {...}]`) rather than one object a line.
    json_array: bool = False
    #: Where a CSV read as Windows-1252 or big-endian UTF-16 is copied as UTF-8 (None: it cannot be).
    utf8_copy: Path | None = None
    #: The blank lines before a CSV's header, which its reader skips (`_leading_blank_lines`).
    blank_lines: int = 0
    #: Whether a CSV whose sample quotes no field is read with RFC 4180's quoting (`_quoting`); not after
    #: such a reading found a quote it cannot close (`reread`).
    rfc_quoting: bool = True
    #: How a CSV's lines of white space among its rows are told when it is read from a copy with those
    #: lines empty (`without_white_lines`); None: it is read as it is.
    white_lines: WhiteLines | None = None
    #: Whether a CSV's first line (after its blank ones) names its columns, as the job's `header` param
    #: says; None: as DuckDB's sniffer tells, which takes a first line of numbers over rows of numbers
    #: for a row (a matrix without a header reads the same: nothing tells the two apart).
    header: bool | None = None

    @property
    def paths(self) -> list[Path]:
        """The files reading the table may open: the connection's `allowed_paths` must hold them."""
        if self.utf8_copy is None:
            return [self.path]
        return [self.path, self.utf8_copy, *(self.utf8_copy.with_name(name) for name in _BLANKED)]

    @property
    def blanked_copy(self) -> Path | None:
        """Where a CSV is copied with its lines of white space empty (`without_white_lines`), None when it
        cannot be (no scratch directory): beside its UTF-8 copy, one name for a copy of the file's own
        bytes, another for one in UTF-8, which a later reading as Windows-1252 (`reread`) needs."""
        if self.utf8_copy is None:
            return None
        return self.utf8_copy.with_name(_BLANKED[self.encoding in _COPIED or self.encoding == "utf-16"])

    def describe_read(self, progress: float | None) -> str:
        """A progress note while the rows are parsed: "read 3.2M of ~10M rows"."""
        if progress is None:
            return "reading the table"
        if self.estimated_rows is None:
            return f"read {progress:.0%} of the file"
        return (
            f"read {count_label(progress * self.estimated_rows)} of ~{count_label(self.estimated_rows)} rows"
        )


def inspect(
    path: Path,
    *,
    fmt: Literal["auto", "csv", "parquet", "jsonl"],
    scratch: Path | None = None,
    header: bool | None = None,
) -> Source:
    """Detect the input's format (when `fmt` is auto) and compression from its first bytes; a CSV gets the
    place in the job's `scratch` directory where `expose` copies it as UTF-8 if it is big-endian UTF-16
    or turns out to be Windows-1252 (without one, such a CSV is refused). `header`: whether a CSV's first
    line names its columns (None: the sniffer tells); a Parquet or JSON file names them itself, and it
    says nothing of them."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(HEAD_BYTES)
    except FileNotFoundError as exc:
        raise InputNotFound(f"input file {path.name} does not exist") from exc
    compression: Compression = (
        "gzip" if head.startswith(_GZIP_MAGIC) else "zstd" if head.startswith(_ZSTD_MAGIC) else "none"
    )
    text, ratio, whole = _peek(head, compression, size=size)
    detected: Format = _detect_format(head, text)
    if fmt == "auto" and detected == "csv" and _JSON_ROWS.match(_text_start(text)):
        # Read as a CSV it was a table of no rows whose columns were named `[[1`, `2]`..., and succeeded.
        raise UnsupportedInput(
            "not a readable table: a JSON array of arrays (rows without column names); give an array of "
            "objects, JSON lines, or a CSV with a header"
        )
    chosen: Format = detected if fmt == "auto" else fmt
    encoding: TextEncoding = "utf-8"
    if chosen == "csv" and text:
        encoding = text_encoding(text) or "utf-8"
    if compression == "none" and chosen != "parquet" and encoding != "utf-16" and b"\x00" in head:
        raise UnsupportedInput("not a text table: the file contains NUL bytes")
    if chosen != "parquet" and whole and not _text_start(text):  # empty or white space (and a BOM)
        # DuckDB reads such a file as a table of one VARCHAR column named `column0` (CSV) or `json`.
        noun = "a header line" if chosen == "csv" else "an object"
        raise UnsupportedInput(f"not a readable {chosen} table: the file is empty (not even {noun})")
    estimate = None
    if chosen != "parquet" and text and ratio is not None:
        lines = text.count(b"\n")
        # Bytes per line in the sample, scaled to the whole (uncompressed) file, less a header.
        if lines and len(text) < size * ratio:
            estimate = max(round(size * ratio * lines / len(text)) - 1, 0)
        else:
            estimate = max(lines - (chosen == "csv" and header is not False), 0)
    json_array = chosen == "jsonl" and _JSON_ARRAY.match(_text_start(text)) is not None
    blank_lines = _leading_blank_lines(text, encoding) if chosen == "csv" else 0
    return Source(
        path=path,
        format=chosen,
        compression=compression,
        estimated_rows=None if json_array else estimate,  # lines do not count its rows
        encoding="utf-16-be" if encoding == "utf-16" and text.startswith(codecs.BOM_UTF16_BE) else encoding,
        json_array=json_array,
        utf8_copy=scratch / "input.utf-8.csv" if scratch is not None and chosen == "csv" else None,
        blank_lines=blank_lines,
        header=header if chosen == "csv" else None,
    )


def _leading_blank_lines(text: bytes, encoding: TextEncoding) -> int:
    """How many lines of `text` (a CSV's first bytes, in `encoding`) are blank before its first one that
    is not. DuckDB's sniffer takes a CSV opening with a blank line for a file without a header, reads the
    header as a row of data and fails on it ("line 2: Error when converting column a"), where pandas and
    spreadsheets skip the blank lines; its `skip` counts them as lines, ending in LF, CRLF or CR alone, in
    UTF-16 too."""
    if encoding == "utf-16":  # by its byte-order mark, which the decoder drops; a code unit may be cut
        text = text[: len(text) // 2 * 2].decode("utf-16", errors="replace").encode("utf-8")
    for count, line in enumerate(_LINE_ENDS.split(text.removeprefix(b"\xef\xbb\xbf"))):
        if line.strip():
            return count
    return 0  # nothing but blank lines in the sample: no header to find past them


def _peek(head: bytes, compression: Compression, *, size: int) -> tuple[bytes, float | None, bool]:
    """The first bytes of the text, how many text bytes one file byte holds (None: unknown), and whether
    they are the file's whole text (`head` is the whole file of `size` bytes, decompressed to its end)."""
    if compression == "none":
        return head, 1.0, size <= len(head)
    if compression == "gzip":
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            text = inflater.decompress(head, 16 * HEAD_BYTES)
        except zlib.error:
            return b"", None, False  # damaged: reading it says so
        used = len(head) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
        # Another gzip member after the first (`cat a.gz b.gz`) is more of the text.
        whole = size <= len(head) and inflater.eof and not inflater.unused_data
        return text, (len(text) / used if used and text else None), whole
    # zstd has no decoder in the standard library of Python 3.11: taken to be CSV, size unknown.
    return b"", None, False


def _detect_format(head: bytes, text: bytes) -> Format:
    """Parquet by its magic; JSON when the text starts with an object (JSON lines) or an array of objects
    (`[{`, or `[]`), which a CSV's first line cannot be; else CSV."""
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    start = _text_start(text)
    return "jsonl" if start.startswith(b"{") or _JSON_ARRAY.match(start) else "csv"


def _text_start(text: bytes) -> bytes:
    return text.removeprefix(b"\xef\xbb\xbf").lstrip()


def expose(
    con: Any,
    source: Source,
    *,
    name: str,
    materialize: bool,
    full_sample: bool = False,
    watch: Watchdog | None = None,
    json_kept: bool = False,
) -> Source:
    """Make the input readable as `name`; `UnsupportedInput` when it is not a table of its format.
    `json_kept`: a JSON key of values of several kinds keeps DuckDB's JSON type (for JSON lines written
    back, each value of its kind), where the other jobs read it as text (`_mixed_json_columns`).

    Column types are guessed from a sample of rows; when a later row disagrees, a table is parsed again
    with types guessed from every row. A view fails only when it is read: its reader calls `expose` again
    with `full_sample=True`, or with `reread`'s source when the text's encoding was wrong. Returns the
    source as it was read in the end (its encoding may differ from the one it came with).
    """
    while True:
        try:
            _expose(
                con,
                source,
                name=name,
                materialize=materialize,
                full_sample=full_sample,
                watch=watch,
                json_kept=json_kept,
            )
        except READ_ERRORS as exc:
            if disk_full(exc):  # a UTF-8 copy or a table's spill had no room: the worker's, not the input's
                raise
            again = reread(source, exc) or without_white_lines(con, source, exc, watch)
            if again is None:
                raise truncation(exc, source) or UnsupportedInput(
                    f"not a readable {source.format} table: {reason(exc, source.path)}"
                ) from exc
            source = again
        else:
            return source


def input_failure(
    exc: duckdb.Error, source: Source, name: str, watch: Watchdog, *paths: Path
) -> PermanentJobError | None:
    """The job's failure when DuckDB's `exc`, raised while a job read the input exposed as `name` (with no
    SQL of the user's), is the input's fault; None when it is not. Its message names the input and the
    other `paths` by their file names only.

    Parquet is read in place, by the job's own queries, and DuckDB's reader fails on a damaged page with
    whatever it met (a bare `duckdb.Error`, "don't know what type"): so for Parquet any error sends the
    input to `damage`, and a file that does not read whole is `MediaDecodeError`, as API.md has a file of
    the right kind that turns out damaged.
    """
    if isinstance(exc, duckdb.OutOfMemoryException | duckdb.InterruptException) or disk_full(exc):
        return None  # a full disk (the output's, a spill's) is the worker's, retried: `errors.disk_full`
    if source.format == "parquet" and (failure := damage(watch, name, source.path)) is not None:
        return failure
    if isinstance(exc, READ_ERRORS):
        return truncation(exc, source) or UnsupportedInput(
            f"not a readable {source.format} table: {reason(exc, source.path, *paths)}"
        )
    return None


#: What DuckDB says of a Parquet file without its footer, and of a gzip stream that stops.
_PARQUET_CUT = "No magic bytes found at end of file"
_GZIP_CUT = "Unexpected end of GZIP stream"


def _opens_as_parquet(path: Path) -> bool:
    """Whether the file begins with Parquet's magic bytes (`format=parquet` may name another kind of file)."""
    with path.open("rb") as handle:
        return handle.read(4) == b"PAR1"


def truncation(exc: BaseException, source: Source) -> MediaDecodeError | None:
    """`MediaDecodeError` when DuckDB's `exc` says the input is cut short: a Parquet file (its head is
    Parquet's, as sniffed) that lost its footer, a gzip stream that ends midway. Both are files of the right
    kind that are damaged, as API.md has them, not the wrong kind of file (they read UNSUPPORTED_INPUT). The
    gzip reader's words are looked for in its IO errors only: a CSV line DuckDB quotes in a parse error may
    hold any words."""
    said = str(exc)
    if source.format == "parquet" and _PARQUET_CUT in said and _opens_as_parquet(source.path):
        return MediaDecodeError(
            "the parquet file is truncated: it ends before its footer (a download or copy that stopped early)"
        )
    if source.compression == "gzip" and isinstance(exc, duckdb.IOException) and _GZIP_CUT in said:
        return MediaDecodeError(
            f"the gzip-compressed {source.format} is truncated: its stream stops midway (a download or copy "
            "that stopped early)"
        )
    return None


#: What DuckDB raises for what it read, rather than for a query's own mistakes (a binder's unknown
#: column, a parser's typo, a cast the SQL asked for): only these send a Parquet input to `damage`.
READER_ERRORS: tuple[type[Exception], ...] = (
    duckdb.InvalidInputException,
    duckdb.IOException,
    duckdb.InternalException,
)


def read_fault(exc: duckdb.Error) -> bool:
    """Whether `exc` may come from reading the input (see `READER_ERRORS`; a bare `duckdb.Error` is what
    the Parquet reader raises for a page it cannot parse)."""
    return isinstance(exc, READER_ERRORS) or type(exc) is duckdb.Error


def damage(watch: Watchdog, name: str, path: Path) -> MediaDecodeError | None:
    """The failure of a Parquet input exposed as `name` that does not read whole, None when it does: every
    value is hashed, so every page of every column is decoded (a count would be answered from the file's
    metadata)."""
    try:
        watch.fetch(f"SELECT bit_xor(hash(COLUMNS(*))) FROM {ident(name)}")  # noqa: S608
    except duckdb.Error as exc:
        if disk_full(exc):
            raise
        return MediaDecodeError(f"the parquet file is damaged: {reason(exc, path)}")
    return None


def reread(source: Source, exc: Exception) -> Source | None:
    """How to read `source` again after DuckDB's `exc`, None when `exc` is not about its text's encoding
    or the quoting it was read with.

    A CSV that is UTF-8 only as far as its first bytes go is read as Latin-1; one with bytes that Latin-1
    leaves to control characters (0x80-0x9F), as Windows-1252, which gives them their printed signs, and
    which reads every other byte as Latin-1 does.
    """
    if source.format != "csv" or not isinstance(exc, duckdb.InvalidInputException):
        return None
    if source.rfc_quoting and _UNTERMINATED_QUOTE in str(exc):
        # A field opening with a quote it never closes, in a file that quoted none in its sample
        # (`"Best" of year` past it): read as written, without quoting, as it was before `_quoting`.
        return replace(source, rfc_quoting=False)
    if source.encoding == "utf-8" and _NOT_UTF8 in str(exc):
        return replace(source, encoding="latin-1")
    if source.encoding == "latin-1" and _NOT_LATIN1 in str(exc) and source.utf8_copy is not None:
        return replace(source, encoding="windows-1252")
    return None


def _expose(
    con: Any,
    source: Source,
    *,
    name: str,
    materialize: bool,
    full_sample: bool,
    watch: Watchdog | None,
    json_kept: bool,
) -> None:
    def create(reader: str, *, every_row: bool = full_sample, replace: str = "", join: str = "") -> bool:
        return _create(
            con,
            name,
            reader,
            materialize=materialize,
            full_sample=every_row,
            replace=replace,
            join=join,
            watch=watch,
        )

    def checked(reader: str, *, json: bool, texts: list[str] | None = None) -> bool:
        """`name` read again with types guessed from every row if a value does not fit its sampled type;
        whether they were (`texts`: a CSV's columns read as text, which `reader` does not say yet)."""
        if full_sample or _sampled_types_hold(
            con, name, reader, json=json, materialize=materialize, texts=texts or [], watch=watch
        ):
            return full_sample
        return create(reader + _as_text(texts or []), every_row=True)

    path = literal(str(source.path.resolve()))
    if source.format == "parquet":
        con.execute(f"CREATE OR REPLACE VIEW {ident(name)} AS SELECT * FROM read_parquet({path})")  # noqa: S608
        # Binding reads the footer: a non-Parquet file fails here.
        con.execute(f"DESCRIBE {ident(name)}").fetchall()
        return
    compression = "" if source.compression == "none" else f", compression='{source.compression}'"
    if source.format == "jsonl":
        layout = "array" if source.json_array else "newline_delimited"
        reader = f"read_json({path}, format='{layout}'{compression}"
        create(reader)
        if _records_folded(con, name) and _folded_keys(con, name, watch) <= UNFOLDED_KEYS_MAX:
            # A column a key, however few rows hold them, as long as a table of that many columns is one.
            reader = f"{reader}, map_inference_threshold=-1"
            create(reader)
        every_row = checked(reader, json=True)
        mixed = _mixed_json_columns(con, name, json_kept=json_kept)
        exact = _whole_number_keys(con, name, reader, watch) + _written_uuid_keys(con, name, reader, watch)
        if mixed or exact:
            replaces = [f"json_extract_string({ident(c)}, '$') AS {ident(c)}" for c in mixed]
            replaces += [
                f"CAST({ident(_exact())}.{ident(_exact(i))} AS {t}) AS {ident(c)}"
                for i, (c, t) in enumerate(exact)
            ]
            join = ""
            if exact:
                names = ", ".join(ident(_exact(i)) for i in range(len(exact)))
                join = f"{reader}{_keys_as_text([c for c, _ in exact])}) AS {ident(_exact())}({names})"
            create(reader, every_row=every_row, replace=", ".join(replaces), join=join)
        return
    path, text = _csv_text(source, watch)
    header = "" if source.header is None else f", header={str(source.header).lower()}"
    quoting = _quoting(con, path, text + header) if source.rfc_quoting else ""
    codec = text + header + quoting
    reader = f"read_csv({path}, {_CSV_STRICT}{codec}"
    texts: list[str] = []  # columns read as text whatever the sniffer makes of them
    every_row = create(reader)
    ambiguous, ordered = _ambiguous_dates(con, name, path, codec, every_row=every_row, watch=watch)
    if ambiguous or ordered:
        texts += [*ambiguous, *(column for column, _, _ in ordered)]
        every_row = create(reader + _as_text(texts), every_row=every_row)
    every_row = checked(reader, json=False, texts=texts) or every_row
    if spelled := _integers_spelled_otherwise(con, name, reader, texts=texts, whole=every_row, watch=watch):
        texts += spelled
        every_row = create(reader + _as_text(texts), every_row=every_row)
    marked = _marked_columns(
        con, name, path, codec, every_row=every_row, materialize=materialize, watch=watch
    )
    _retyped(
        con,
        name,
        reader,
        create,
        marked=[*ordered, *_except_columns(marked, ordered)],
        texts=texts,
        every_row=every_row,
        watch=watch,
    )
    _reject_ragged_single_column(con, name, path, text, header + quoting)


def _csv_text(source: Source, watch: Watchdog | None) -> tuple[str, str]:
    """Where the CSV `source`'s text is read (its path as SQL: the file, or a copy made here) and the
    `read_csv` arguments that read it there (the blank lines before its header skipped, its compression
    and encoding)."""
    skip = f", skip={source.blank_lines}"
    if source.white_lines is not None:
        copy = _blanked_copy(source, watch)
        # A copy of the file's own bytes is read in its encoding; another is UTF-8.
        latin1 = source.encoding == "latin-1"
        return literal(str(copy.resolve())), skip + (", encoding='latin-1'" if latin1 else "")
    if source.encoding in _COPIED:
        return literal(str(_copy_as_utf8(source, watch).resolve())), skip
    codec = skip + ("" if source.compression == "none" else f", compression='{source.compression}'")
    if source.encoding != "utf-8":
        codec += f", encoding='{source.encoding}'"
    return literal(str(source.path.resolve())), codec


def without_white_lines(con: Any, source: Source, exc: Exception, watch: Watchdog | None) -> Source | None:
    """`source` read from a copy with its lines of white space empty, when reading it failed with DuckDB's
    `exc` and it has such a line among its rows; None when it has none (or cannot be copied): it fails as
    it did.

    A line of nothing but spaces or tabs between a CSV's rows (an editor's, a hand-edited export's) failed
    the job: DuckDB skips an empty line, but reads this one as a row of one field ("line 3: expected 2
    fields, found 1"), or, in its first rows, could not tell the delimiter at all. pandas
    (`skip_blank_lines`) and spreadsheets skip it. DuckDB has no option that does: `ignore_errors` would
    drop any row it cannot read, silently, and `null_padding` reads the line as a row of nulls. So the
    line is emptied in a copy of the text (DuckDB skips it there, and the lines keep their numbers for
    its errors), where it is one: after the header (the blank lines before it are skipped already),
    outside a quoted field (a line of spaces in a field written over several lines is its text), and in
    a table of several columns. In a table of one column a line of spaces is a field like another, its
    value those spaces, as DuckDB read it and still reads it: nothing tells it from a value. A line of
    delimiters (`,,`) is a row of empty fields, and stays; so is a line holding a tab in a tab-separated
    file, where spaces alone make a line of white space. The delimiter, the quote and the column count
    are the sniffer's, told past the lines it could not read (`ignore_errors` there only).

    Looked for only once the file has failed to read: a file that reads costs nothing more. A failing
    one is read once more, to its first line of white space (for a file that has none, the whole of it,
    before it fails as it did), and copied when it has one (`_blanked_copy`). Not a zstd-compressed
    file, which the standard library of Python 3.11 cannot decompress.
    """
    if (
        source.format != "csv"
        or source.white_lines is not None
        or source.blanked_copy is None
        or source.compression == "zstd"
        or not isinstance(exc, duckdb.InvalidInputException | duckdb.ConversionException)
    ):
        return None
    path, codec = _csv_text(source, watch)
    try:
        delimiter, quote, escape, columns, ends = _fetch(
            con,
            f"SELECT Delimiter, Quote, Escape, Columns, NewLineDelimiter FROM sniff_csv({path}, "  # noqa: S608
            f"strict_mode=true, null_padding=false, ignore_errors=true{codec})",
            watch,
        )[0]
    except READ_ERRORS:
        return None
    if len(columns) < 2:
        return None
    tabs = delimiter != "\t"
    newline = b"\r" if ends == "\\r" else b"\n"  # sniff_csv spells it escaped: \n, \r\n, \r
    if quote not in _NO_QUOTE:
        unescaped = escape in _NO_QUOTE
        white = WhiteLines(tabs, quote.encode(), None if unescaped else escape.encode(), newline)
    elif tabs and source.rfc_quoting:  # read so by `_quoting`: RFC 4180's quoting, but in a TSV
        white = WhiteLines(tabs, quote=b'"', escape=b'"', newline=newline)
    else:
        white = WhiteLines(tabs, newline=newline)
    blanker = _Blanker(white, source.blank_lines)
    with _white_text(source, watch) as chunks:
        for chunk in chunks:
            blanker.feed(chunk)
            if blanker.found:
                return replace(source, white_lines=white)
    blanker.end()
    return replace(source, white_lines=white) if blanker.found else None


class _Blanker:
    """Empties a CSV's lines of white space among its rows (`without_white_lines`), its text given a chunk
    at a time; `found` counts them."""

    def __init__(self, white: WhiteLines, blank_lines: int) -> None:
        self._first, self._line, self._last = _WHITE_LINES[white.tabs, white.newline]
        self._quote, self._escape, self._newline = white.quote, white.escape, white.newline
        #: Whether the text so far leaves a quoted field open.
        self._quoted = False
        #: The text after the last line end given, whose line goes on in the next chunks.
        self._held: list[bytes] = []
        #: The lines still to pass as they are: the blank ones before the header, and the header.
        self._before = blank_lines + 1
        self.found = 0

    def feed(self, chunk: bytes) -> bytes:
        """The text of the lines that end in `chunk`, those of white space empty."""
        end = chunk.rfind(self._newline) + 1
        if not end:  # a line longer than the chunk: joined once it ends
            self._held.append(chunk)
            return b""
        lines = b"".join([*self._held, chunk[:end]])
        self._held = [chunk[end:]]
        return self._blanked(lines)

    def end(self) -> bytes:
        """The text's last line, which has no line end: empty when it is white space alone."""
        last, self._held = b"".join(self._held), []
        if last and not self._before and not self._quoted and self._last.fullmatch(last):
            self.found += 1
            return b""
        return last

    def _blanked(self, lines: bytes) -> bytes:
        start = 0
        while self._before and start < len(lines):
            start = lines.index(self._newline, start) + 1
            self._before -= 1
        first = self._first.match(lines, start)  # `start` begins a line
        spans = [first.span()] if first is not None else []
        spans += [(match.start() + 1, match.end()) for match in self._line.finditer(lines, start)]
        pieces = []
        kept = counted = 0  # where the text not yet given starts, and the text whose quotes are not counted
        for begin, end in spans:
            if self._quote is not None:
                self._quoted ^= _quotes(lines, counted, begin, self._quote, self._escape) % 2 == 1
                counted = begin
                if self._quoted:
                    continue  # a line of a quoted field: its text
            self.found += 1
            pieces.append(lines[kept:begin])
            kept = end
        if self._quote is not None:
            self._quoted ^= _quotes(lines, counted, len(lines), self._quote, self._escape) % 2 == 1
        pieces.append(lines[kept:])
        return b"".join(pieces)


def _quotes(text: bytes, start: int, end: int, quote: bytes, escape: bytes | None) -> int:
    """How many `quote` characters of `text[start:end]` open or close a field: those an `escape` character
    of its own does not escape (`\\"`; RFC 4180's `""` is two, which leave a field as it was). A quote
    after an escaped escape (`\\\\"`) is taken for an escaped one, which tells the fields after it wrong:
    a backslash escaping itself right before a quote, in a file with lines of white space, is left at
    that."""
    count = text.count(quote, start, end)
    if escape is not None and escape != quote:
        count -= text.count(escape + quote, start, end)
    return count


#: RFC 4180's quoting, as `read_csv` takes it: fields quoted in `"`, a `"` in them doubled.
_RFC_QUOTING = ", quote='\"', escape='\"'"


def _quoting(con: Any, source: str, codec: str) -> str:
    """The `read_csv` arguments that read the CSV `source` (with the reader's other arguments, `codec`)
    with RFC 4180's quoting when DuckDB's sniffer found no quote character in its sample of rows; none
    when it found one (its choice stands: `'`, or `"` with its escape) or when the file reads otherwise
    with that quoting (`"a"b` in the sample: a quote no writer of RFC 4180 puts there).

    The sniffer picks a quote only from the first 20,480 rows: a file whose first quoted field came later
    (as Python's csv module and spreadsheets quote a field only when it needs it) was read with none, so
    `"Smith, John"` there failed the job ("expected 2 fields, found 3") and `"12"" pizza"` read with its
    quotes, without a word. The check is one more sniff of the sample when it holds no quote.

    Not for tab-separated text, whose convention has no quoting (IANA's TSV, IMDb's dumps): a `"Weird Al`
    there and a `12"` 50 rows on made the 50 lines between them one field, without a word."""
    sniff = f"SELECT Delimiter, Quote, HasHeader, Columns FROM sniff_csv({source}, {_CSV_STRICT}{codec}"  # noqa: S608
    try:
        found = con.execute(f"{sniff})").fetchall()[0]
        if found[1] not in _NO_QUOTE or found[0] == "\t":
            return ""
        quoted = con.execute(f"{sniff}{_RFC_QUOTING})").fetchall()[0]
    except READ_ERRORS:
        return ""  # reading the file fails the same way, saying why
    return _RFC_QUOTING if (found[0], found[2], found[3]) == (quoted[0], quoted[2], quoted[3]) else ""


#: What DuckDB's sniffer gives as the quote character of a CSV whose sample quotes no field.
_NO_QUOTE = ("(empty)", "", "\x00")


def _except_columns(
    marked: list[tuple[str, str, bool]], these: list[tuple[str, str, bool]]
) -> list[tuple[str, str, bool]]:
    """The `marked` columns' readings but for the columns `these` read otherwise."""
    columns = {column for column, _, _ in these}
    return [marks for marks in marked if marks[0] not in columns]


def _retyped(
    con: Any,
    name: str,
    reader: str,
    create: Callable[..., bool],
    *,
    marked: list[tuple[str, str, bool]],
    texts: list[str],
    every_row: bool,
    watch: Watchdog | None,
) -> None:
    """The CSV table `name` (read by `reader`, its `texts` read as text) made again by `create` with its
    columns of null markers typed (`_marked_columns`), then with its timestamps that hold an offset or
    nanoseconds typed to keep them (`_exact_timestamps`; after the markers, so that a column of
    timestamps with `NA` among them is one too)."""
    replaces = {column: f"{expr} AS {ident(column)}" for column, expr, _ in marked}
    texts = list(dict.fromkeys([*texts, *(column for column, _, text in marked if text)]))
    if marked:
        create(reader + _as_text(texts), every_row=every_row, replace=", ".join(replaces.values()))
    if timed := _exact_timestamps(con, name, reader, texts=texts, every_row=every_row, watch=watch):
        texts += [column for column, _ in timed if column not in texts]
        for column, kind in timed:
            value = f"trim({ident(column)})"
            typed = (
                f"CASE WHEN {value} IN {_MARKERS} OR {value} = '' THEN NULL ELSE CAST({value} AS {kind}) END"
            )
            replaces[column] = f"{typed} AS {ident(column)}"
        create(reader + _as_text(texts), every_row=every_row, replace=", ".join(replaces.values()))


def _mixed_json_columns(con: Any, name: str, *, json_kept: bool) -> list[str]:
    """The columns of the JSON table `name` read as text (none when `json_kept`): those of a key whose
    values are of several kinds (a number here, a string there: codes, ids), which DuckDB types JSON,
    whose values are their JSON text: the string A-7 read `"A-7"`, quotes and all, in the rows, the
    profile and a CSV, and `WHERE code = 'A-7'` failed. Each value is read as written instead (a string
    without its quotes, a number or `true` as its JSON text), through the view's own column, not a
    reading with the types given (which lost a day-first date's format and a key renamed for its case).
    JSON lines written back (`json_kept`) keep each value of its kind: `101` a number, `"A-7"` a string.
    """
    if json_kept:
        return []
    return [column for column, kind in _described(con, name) if kind == "JSON"]


#: JSON numbers DuckDB's reader keeps exact: its doubles hold every integer up to 2**53, no further.
_EXACT_IN_DOUBLE = 2**53
#: A JSON integer literal, as DuckDB gives a number's text.
_JSON_INTEGER = r"-?[0-9]+"


def _exact(position: int | None = None) -> str:
    """The name of the reading of a JSON table's keys as their text (`_whole_number_keys`,
    `_written_uuid_keys`), or of its `position`th column (written after the reading's name: a key may
    have any name)."""
    return "medialens exact" if position is None else f"medialens exact {position}"


def _whole_number_keys(con: Any, name: str, reader: str, watch: Watchdog | None) -> list[tuple[str, str]]:
    """The columns of the JSON table `name` read from `reader` that are integers past 64 bits (ids of 20
    digits and more, big counters), each with the type that holds them exactly: HUGEINT, or BIGNUM past
    its 39 digits, as DuckDB's CSV reader types them. DuckDB's JSON reader types such a key DOUBLE and
    rounds each value to 16 digits, silently: neighbouring ids 12345678901234567890123 and ...124 became
    one. A DOUBLE column is one when every value it holds is whole and one is past 2**53; its values are
    then read again as their JSON text (DuckDB keeps a number's digits), and it is one when every text is
    an integer. A key with a fraction or an exponent anywhere stays a double; so does a key DuckDB renamed
    (of two differing only by case, the second), whose text cannot be read by its name.

    A column with a fraction in its first `SAMPLE_ROWS` rows is passed over at once; the others cost one
    more pass over them (for a conversion, over the file: 0.14 s for two such keys of 1,000,000 objects).
    """
    doubles = [column for column, kind in _described(con, name) if kind == "DOUBLE"]
    if doubles:
        whole = ", ".join(f"bool_and({ident(c)} = round({ident(c)})) IS NOT false" for c in doubles)
        columns = ", ".join(ident(c) for c in doubles)
        first = f"SELECT {whole} FROM (SELECT {columns} FROM {ident(name)} LIMIT {SAMPLE_ROWS})"  # noqa: S608
        doubles = [c for c, maybe in zip(doubles, _fetch(con, first, watch)[0], strict=True) if maybe]
    if not doubles:
        return []
    counted = ", ".join(
        f"count({ident(c)}), bool_and({ident(c)} = round({ident(c)})), max(abs({ident(c)}))" for c in doubles
    )
    seen = _fetch(con, f"SELECT {counted} FROM {ident(name)}", watch)[0]  # noqa: S608
    wide = {
        column: int(seen[3 * i])
        for i, column in enumerate(doubles)
        if seen[3 * i + 1] and (seen[3 * i + 2] or 0) >= _EXACT_IN_DOUBLE
    }
    if not wide:
        return []
    checks = ", ".join(
        f"count({ident(c)}), bool_and(regexp_full_match({ident(c)}, '{_JSON_INTEGER}')),"
        f" bool_and({ident(c)} IS NULL OR TRY_CAST({ident(c)} AS HUGEINT) IS NOT NULL)"
        for c in wide
    )
    read = _fetch(con, f"SELECT {checks} FROM {reader}{_keys_as_text(list(wide))})", watch)[0]  # noqa: S608
    return [
        (column, "HUGEINT" if read[3 * i + 2] else "BIGNUM")
        for i, (column, count) in enumerate(wide.items())
        if read[3 * i] == count and read[3 * i + 1]
    ]


#: An ISO 8601 timestamp as a CSV writes it, with what DuckDB's TIMESTAMP drops: its UTC offset, and its
#: digits past the microsecond.
_ISO_TIMESTAMP = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"  # a date
    r"([ T][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?"  # and a time
)
#: The infinite timestamps' words, which DuckDB casts.
_INFINITE = "('infinity', '-infinity', '+infinity')"
_UTC_OFFSET = r"[0-9]:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"  # after a time
_PAST_MICROSECONDS = r"[.,][0-9]{7}"


def _exact_timestamps(
    con: Any, name: str, reader: str, *, texts: list[str], every_row: bool, watch: Watchdog | None
) -> list[tuple[str, str]]:
    """The TIMESTAMP columns of the CSV table `name` read from `reader` (a `read_csv` call without its
    closing parenthesis and without the columns it reads as text, `texts`) whose text holds what that type
    drops, each with the type that keeps it: TIMESTAMPTZ for a UTC offset (`10:00:00+02:00` read 10:00,
    not 08:00 UTC), TIMESTAMP_NS for more than six decimals (pandas writes nanoseconds; DuckDB kept
    microseconds). Null markers (`NA`), `infinity` and dates without a time among them read as DuckDB
    casts them.

    DuckDB's sniffer types a column TIMESTAMPTZ when its sample has an offset, but one met only past the
    sample was dropped without a word, even with types guessed from every row; and it never chooses
    TIMESTAMP_NS. Only ISO 8601 text is read so (another format keeps DuckDB's reading). The check is one
    more pass over the file for a table with timestamps, looking for the characters an offset is written
    with and for text longer than microseconds (for 1,000,000 rows, 0.15 s for one such column beside the
    0.1 s its reading takes); the columns that have them are read once more, each value checked.
    """
    stamps = [column for column, kind in _described(con, name) if kind == "TIMESTAMP"]
    sample = ", sample_size=-1" if every_row else ""

    def passed(columns: list[str], checks: list[str]) -> tuple[Any, ...]:
        read = reader + _as_text(list(dict.fromkeys([*texts, *columns])))
        return _fetch(con, f"SELECT {', '.join(checks)} FROM {read}{sample})", watch)[0]  # noqa: S608

    def value(column: str) -> str:
        text = f"trim({ident(column)})"
        unset = f"{text} IN {_MARKERS} OR lower({text}) IN {_INFINITE}"
        return f"CASE WHEN {unset} THEN NULL ELSE NULLIF({text}, '') END"

    if stamps:
        maybe = passed(
            stamps,
            [
                f"bool_or(contains({value(c)}, '+') OR contains(substr({value(c)}, 11), '-')"
                f" OR contains({value(c)}, 'Z') OR length({value(c)}) > 26)"
                for c in stamps
            ],
        )
        stamps = [column for column, found in zip(stamps, maybe, strict=True) if found]
    if not stamps:
        return []
    checks = []
    for column in stamps:
        checks += [
            f"bool_and({value(column)} IS NULL OR regexp_full_match({value(column)}, '{_ISO_TIMESTAMP}'))",
            f"bool_or(regexp_matches({value(column)}, '{_UTC_OFFSET}'))",
            f"bool_or(regexp_matches({value(column)}, '{_PAST_MICROSECONDS}'))",
        ]
    found = passed(stamps, checks)
    return [
        (column, "TIMESTAMPTZ" if zoned else "TIMESTAMP_NS")
        for column, iso, zoned, fine in zip(stamps, found[::3], found[1::3], found[2::3], strict=True)
        if iso and (zoned or fine)
    ]


def _written_uuid_keys(con: Any, name: str, reader: str, watch: Watchdog | None) -> list[tuple[str, str]]:
    """The UUID columns of the JSON table `name` read from `reader` whose text has capitals, each to be
    read as that text (VARCHAR). DuckDB's JSON reader types a key of UUIDs UUID, which gives them back in
    lower case: a SQL Server export's `6F9619FF-8B86-D011-B42D-00C04FC964FF` was converted and shown
    `6f9619ff-...`, and no longer matched its source by string. A CSV's are text, as written; a JSON
    key of lower-case UUIDs stays UUID. The check reads those keys again as their text, a pass over the
    file: 0.26 s for a key of 1,000,000 objects, beside the 0.46 s DuckDB takes to write them as Parquet.
    """
    uuids = [column for column, kind in _described(con, name) if kind == "UUID"]
    if not uuids:
        return []
    capitals = ", ".join(f"bool_or({ident(c)} <> lower({ident(c)}))" for c in uuids)
    found = _fetch(con, f"SELECT {capitals} FROM {reader}{_keys_as_text(uuids)})", watch)[0]  # noqa: S608
    return [(column, "VARCHAR") for column, upper in zip(uuids, found, strict=True) if upper]


def _keys_as_text(keys: list[str]) -> str:
    """The `read_json` argument that reads `keys` alone, each as its JSON text (a number's digits kept)."""
    return ", columns={" + ", ".join(f"{literal(key)}: 'VARCHAR'" for key in keys) + "}"


#: An integer's text that DuckDB's cast reads as another number's (`0x10` and `0b10000` as 16, `1_000` as
#: 1000, `1e3` as 1000, `1.0` as 1): `{0}` is the trimmed text.
_SPELLED_OTHERWISE = r"regexp_matches({0}, '^[+-]?0[xXbB]|[_eE.]')"


def _integers_spelled_otherwise(
    con: Any, name: str, reader: str, *, texts: list[str], whole: bool, watch: Watchdog | None
) -> list[str]:
    """The columns of the CSV table `name` (read by `reader`, its `texts` read as text) typed as integers
    that hold a number spelled otherwise than as its digits (`_SPELLED_OTHERWISE`): they are read as text,
    as `007` is. DuckDB's sniffer and cast take `0x80070005` for 2147942405, so an error code or an id
    written in hexadecimal came as a number no one wrote, and `0x10` and `16` as one value; pandas and
    Python's csv keep the text. The sampled rows are read (the first `SAMPLE_ROWS`: those past them are
    held to their integer's own text by `_sampled_types_hold`), or with `whole`, types guessed from every
    row, all of them: a pass over the sample's bytes, or in that rarer case the file's."""
    integers = [
        column for column, kind in _described(con, name) if kind in _WHOLE_NUMBERS and column not in texts
    ]
    if not integers:
        return []
    limit = "" if whole else f" LIMIT {SAMPLE_ROWS}"
    rows = f"(SELECT * FROM {reader}{_as_text([*texts, *integers])}){limit})"  # noqa: S608
    spelled = _spelled_otherwise(con, rows, integers, watch)
    return [column for column in integers if column in spelled]


def _spelled_otherwise(con: Any, rows: str, columns: list[str], watch: Watchdog | None) -> set[str]:
    """Those of the text `columns` of `rows` (a table, or a query in parentheses) that hold an integer
    spelled otherwise than as its digits (`_SPELLED_OTHERWISE`)."""
    checks = ", ".join(
        f"bool_or({_SPELLED_OTHERWISE.format(f'trim({ident(column)})')})" for column in columns
    )
    found = _fetch(con, f"SELECT {checks} FROM {rows}", watch)[0]  # noqa: S608
    return {column for column, spelled in zip(columns, found, strict=True) if spelled}


def _as_text(columns: list[str]) -> str:
    """The `read_csv` argument that reads `columns` as text (none: no argument, as it takes one at most)."""
    if not columns:
        return ""
    return ", types={" + ", ".join(f"{literal(column)}: 'VARCHAR'" for column in columns) + "}"


def _copy_as_utf8(source: Source, watch: Watchdog | None) -> Path:
    """The text of `source`, read in its encoding (Windows-1252 or big-endian UTF-16), written as UTF-8 to
    its `utf8_copy` (once a job: a copy already there is kept). The five bytes Windows-1252 leaves
    undefined read as the control characters Latin-1 gives them, as WHATWG's decoder reads them; UTF-16's
    byte-order mark is left out, as DuckDB leaves it out of UTF-16 it reads."""
    encoding = _COPIED[source.encoding]
    target = source.utf8_copy
    if target is None:  # `inspect` gives a CSV a copy to make when it has a scratch directory
        raise UnsupportedInput(f"not a readable csv table: {encoding} text needs a scratch directory")
    if target.exists():
        return target
    if source.compression == "zstd":
        # The standard library of Python 3.11 has no zstd decoder.
        raise UnsupportedInput(
            f"a zstd-compressed CSV in {encoding} cannot be read: give it uncompressed, gzip-compressed or "
            "in UTF-8"
        )
    decoder = (
        codecs.getincrementaldecoder("utf-16")(errors="strict")
        if source.encoding == "utf-16-be"
        else codecs.getincrementaldecoder("cp1252")(errors=_UNDEFINED_AS_LATIN1)
    )
    with _text_chunks(source.path, source.compression, watch) as chunks:
        try:
            _write_copy(
                target,
                _decoded(chunks, decoder),
                too_large=f"the {encoding} text needs more than the {{budget:,}} bytes of scratch space its "
                "UTF-8 copy may take here: give the table in UTF-8",
            )
        except UnicodeDecodeError as exc:  # UTF-16's lone surrogate or odd last byte
            raise UnsupportedInput(f"not a readable csv table: not {encoding} text ({exc.reason})") from exc
    return target


def _blanked_copy(source: Source, watch: Watchdog | None) -> Path:
    """The text of the CSV `source` with its lines of white space among its rows empty
    (`without_white_lines`), written to its `blanked_copy` (once a job: a copy already there is kept):
    byte for byte but those lines for a text DuckDB reads in its own encoding (UTF-8, Latin-1), in UTF-8
    for another (`_white_text`)."""
    target, white = source.blanked_copy, source.white_lines
    if target is None or white is None:  # `without_white_lines` gives both or neither
        raise UnsupportedInput("not a readable csv table: its lines of white space need a scratch directory")
    if target.exists():
        return target
    blanker = _Blanker(white, source.blank_lines)
    with _white_text(source, watch) as chunks:
        _write_copy(
            target,
            _chain((blanker.feed(chunk) for chunk in chunks), blanker.end),
            too_large="the text needs more than the {budget:,} bytes of scratch space its copy without its "
            "lines of white space may take here: remove them, or give the table as Parquet",
        )
    return target


@contextlib.contextmanager
def _white_text(source: Source, watch: Watchdog | None) -> Iterator[Iterator[bytes]]:
    """The text of the CSV `source` as `without_white_lines` reads it, in chunks: a byte, a line end, a
    space, a tab or a quote one character (UTF-8 or Latin-1): the file's own bytes, decompressed, UTF-16
    in UTF-8, and for an encoding read from a UTF-8 copy (`_COPIED`), that copy."""
    if source.encoding in _COPIED:
        with _text_chunks(_copy_as_utf8(source, watch), "none", watch) as chunks:
            yield chunks
    elif source.encoding == "utf-16":  # by its byte-order mark, which the decoder leaves out
        with _text_chunks(source.path, source.compression, watch) as chunks:
            try:
                yield _decoded(chunks, codecs.getincrementaldecoder("utf-16")(errors="strict"))
            except UnicodeDecodeError as exc:  # a lone surrogate or an odd last byte
                raise UnsupportedInput(f"not a readable csv table: not UTF-16 text ({exc.reason})") from exc
    else:
        with _text_chunks(source.path, source.compression, watch) as chunks:
            yield chunks


@contextlib.contextmanager
def _text_chunks(path: Path, compression: Compression, watch: Watchdog | None) -> Iterator[Iterator[bytes]]:
    """The bytes of the file at `path` (decompressed when it is gzip), `_COPY_CHUNK` at a time: its
    progress for `watch` the share of the file read, the job's cancellation checked after each chunk.
    Damaged gzip data raises `UnsupportedInput`."""
    size = max(path.stat().st_size, 1)
    done = 0

    def chunks(raw: Any) -> Iterator[bytes]:
        nonlocal done
        text = gzip.GzipFile(fileobj=raw, mode="rb") if compression == "gzip" else raw
        try:
            while chunk := text.read(_COPY_CHUNK):
                done = raw.tell()
                yield chunk
                if watch is not None:
                    watch.checkpoint()
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise UnsupportedInput(f"not a readable csv table: damaged gzip data ({exc})") from exc

    follow = watch.following(lambda: done / size) if watch is not None else contextlib.nullcontext()
    with path.open("rb") as raw, follow:
        yield chunks(raw)


def _decoded(chunks: Iterable[bytes], decoder: codecs.IncrementalDecoder) -> Iterator[bytes]:
    """`chunks` of text read by `decoder`, in UTF-8."""
    for chunk in chunks:
        yield decoder.decode(chunk).encode("utf-8")
    yield decoder.decode(b"", final=True).encode("utf-8")


def _chain(chunks: Iterable[bytes], last: Callable[[], bytes]) -> Iterator[bytes]:
    """`chunks`, then what `last` gives once they are all given."""
    yield from chunks
    yield last()


def _write_copy(target: Path, chunks: Iterable[bytes], *, too_large: str) -> None:
    """`chunks` written to `target`, through a partial file renamed once it is whole; `UnsupportedInput`
    saying `too_large` (with the `budget` it passed) when they take more than half the disk's free space:
    a gzip input is written out whole, and a small upload can hold gigabytes of text, so the copy cannot
    fill the disk the node's other jobs spill to."""
    target.parent.mkdir(parents=True, exist_ok=True)
    budget = shutil.disk_usage(target.parent).free // 2
    written = 0
    partial = target.with_name(target.name + ".part")
    with partial.open("wb") as out:
        for chunk in chunks:
            written += out.write(chunk)
            if written > budget:
                raise UnsupportedInput(too_large.format(budget=budget))
    partial.rename(target)


def _undefined_as_latin1(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):  # registered for decoding only
        raise error
    return error.object[error.start : error.end].decode("latin-1"), error.end


_UNDEFINED_AS_LATIN1 = "medialens-undefined-as-latin-1"
codecs.register_error(_UNDEFINED_AS_LATIN1, _undefined_as_latin1)


def resample(exc: Exception) -> bool:
    """Whether DuckDB's `exc`, raised reading a CSV or JSON table whose types were guessed from a sample of
    its rows, may be a later row that disagrees with them, so that guessing from every row reads it.

    A CSV raises a conversion error; JSON a "JSON transform error" for a key first met past the sample or a
    value of another kind (text where numbers were, an object, an array), though not for a duplicate key.
    """
    if isinstance(exc, duckdb.ConversionException):
        return True
    message = str(exc)
    return (
        isinstance(exc, duckdb.InvalidInputException)
        and _JSON_TRANSFORM in message
        and _JSON_DUPLICATE_KEY not in message
    )


#: The most keys of JSON objects read a column a key (`_records_folded`): objects keyed by ids (a user's
#: scores by user id) have a key a row, which as columns took gigabytes; they stay one MAP column.
UNFOLDED_KEYS_MAX = 1_000


def _folded_keys(con: Any, name: str, watch: Watchdog | None) -> int:
    """How many distinct keys the objects folded into the MAP column `json` of `name` have."""
    sql = f"SELECT count(DISTINCT key) FROM (SELECT unnest(map_keys(json)) AS key FROM {ident(name)})"  # noqa: S608
    rows = _fetch(con, sql, watch)
    return int(rows[0][0])


def _records_folded(con: Any, name: str) -> bool:
    """Whether DuckDB read the JSON objects exposed as `name` as one MAP column named `json` rather than a
    column a key: what it does past 200 keys, or when most keys are in few objects
    (`map_inference_threshold`, `field_appearance_threshold`), so a 1,000-column table had one column."""
    described = con.execute(f"DESCRIBE {ident(name)}").fetchall()
    return len(described) == 1 and str(described[0][0]) == "json" and str(described[0][1]).startswith("MAP(")


def _create(
    con: Any,
    name: str,
    reader: str,
    *,
    materialize: bool,
    full_sample: bool,
    watch: Watchdog | None,
    replace: str = "",
    join: str = "",
) -> bool:
    """`name` as a table or a view of `reader` (a table function call without its closing parenthesis),
    its columns in `replace` (`expr AS "column", ...`) computed from what it reads and from `join`, a
    reading of the same rows in the same order whose columns are not kept (a table function, its alias
    naming its columns): each of its rows beside the row at its position. Whether its types were guessed
    from every row."""
    kind = "TABLE" if materialize else "VIEW"
    read = ident("medialens read")
    columns = f"{read}.* REPLACE ({replace})" if replace else f"{read}.*"
    beside = f" POSITIONAL JOIN {join}" if join else ""

    def sql(sample: str) -> str:
        made = f"CREATE OR REPLACE {kind} {ident(name)}"
        return f"{made} AS SELECT {columns} FROM {reader}{sample}) AS {read}{beside}"  # noqa: S608

    try:
        _run(con, sql(", sample_size=-1" if full_sample else ""), watch)
    except READ_ERRORS as exc:
        if full_sample or not resample(exc):
            raise
        # The types were guessed from a sample and a later row disagrees: guess from every row.
        _run(con, sql(", sample_size=-1"), watch)
        return True
    return full_sample


#: The rows DuckDB guesses a CSV's column types from (its `sample_size`).
SAMPLE_ROWS = 20_480
_INTEGERS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER")
#: The integer types a CSV column may be given.
_WHOLE_NUMBERS = frozenset({*_INTEGERS, "UBIGINT", "UHUGEINT"})
#: Column types whose readers cast a value past the sample more loosely than their sniffers judge one
#: (DuckDB's issues 25824 and 25786), with the SQL that tells a value's text (`{0}`, trimmed, not empty)
#: that does not fit type `{1}`: its cast does not give it back (`1.5` -> 2 -> `2`; `007` -> `7`;
#: `2024-01-02 13:45` as a date -> `2024-01-02`), or, for JSON's doubles and booleans, it is not one.
_LOOSE_CSV = dict.fromkeys(
    (*_INTEGERS, "UBIGINT", "UHUGEINT", "DATE"), "{0} IS DISTINCT FROM CAST(TRY_CAST({0} AS {1}) AS VARCHAR)"
)
_LOOSE_JSON = _LOOSE_CSV | {
    "DOUBLE": "TRY_CAST({0} AS DOUBLE) IS NULL",  # a JSON true read 1.0
    "FLOAT": "TRY_CAST({0} AS DOUBLE) IS NULL",
    "BOOLEAN": "lower({0}) NOT IN ('true', 'false')",  # a JSON 7 read true
    # A key null in every sampled object is typed NULL, and every later value of it was dropped.
    '"NULL"': "true",
}


def _sampled_types_hold(
    con: Any,
    name: str,
    reader: str,
    *,
    json: bool,
    materialize: bool,
    watch: Watchdog | None,
    texts: list[str] | None = None,
) -> bool:
    """Whether every value of the table exposed as `name` from `reader` (a CSV's, or with `json` a JSON
    one's) fits the type its column was given from a sample of rows, for the types its reader casts
    loosely past the sample (`_LOOSE_CSV`, `_LOOSE_JSON`): DuckDB changes such a value without a word (1.5
    in a BIGINT column reads 2, 007 reads 7, a time in a DATE column is dropped; in JSON `true` among
    doubles reads 1.0 and 7 among booleans true). Those columns are read again as text and each value
    checked. A table of no more rows than the sample was typed from all of them. A CSV's `texts` are the
    columns its table reads as text, which `reader` does not say: `read_csv` takes one `types` argument.

    Some texts that fit read as not fitting (a `+5`, a date in another format): they cost a reading with
    types guessed from every row, which gives the same types. The check is one more pass over the file:
    for a CSV of 1,000,000 rows and 12 columns (122 MB), 0.65 s beside the 0.8 s its reading takes on two
    cores, where guessing from every row up front took 2.7 s more; for 1,000,000 JSON objects of 6 keys,
    0.9 s beside 0.45 s, where guessing from every object took 1.8 s more.
    """
    loose_kinds = _LOOSE_JSON if json else _LOOSE_CSV
    described = _described(con, name)
    loose = [(column, kind) for column, kind in described if kind in loose_kinds]
    if not loose:
        return True
    if materialize and _row_count(con, name) <= SAMPLE_ROWS:
        return True
    if json:  # read_json takes every column's type or none
        text = {column for column, _ in loose}
        spec = ", ".join(
            f"{literal(column)}: {literal('VARCHAR' if column in text else kind)}"
            for column, kind in described
        )
        as_text = f"columns={{{spec}}}"
    else:
        as_text = _as_text([*(texts or []), *(column for column, _ in loose)]).removeprefix(", ")
    misfit = " OR ".join(
        f"(trim({ident(column)}) <> '' AND {loose_kinds[kind].format(f'trim({ident(column)})', kind)})"
        for column, kind in loose
    )
    sql = f"SELECT 1 FROM {reader}, {as_text}) WHERE {misfit} LIMIT 1"  # noqa: S608
    rows = _fetch(con, sql, watch)
    return not rows


#: A date format DuckDB's sniffer gives a CSV that is not year first: its day, month and year fields
#: (`%d`, `%m`, `%Y` or `%y`), their separator, and what follows (a timestamp's time).
_DATE_FIELDS = re.compile(r"(%[dmYy])([-/. ])(%[dmYy])\2(%[dmYy])(.*)", re.DOTALL)


def _date_family(sniffed: str | None) -> list[str]:
    """The formats DuckDB's sniffer chooses among for dates written as `sniffed` (`%d/%m/%Y`), `sniffed`
    first: day, month and year in each order it tries (`%d/%m/%Y`, `%m/%d/%Y`, `%Y/%m/%d`), with the same
    separator, year width and time. None for ISO dates (`%Y-%m-%d`, or no format at all): a four-digit
    year first is read one way only."""
    match = _DATE_FIELDS.fullmatch(sniffed or "")
    if sniffed is None or match is None or match[1] == "%Y":
        return []
    year = "%Y" if "%Y" in match.group(1, 3, 4) else "%y"
    sep, rest = match[2], match[5]
    family = [
        sep.join(order) + rest for order in (("%d", "%m", year), ("%m", "%d", year), (year, "%m", "%d"))
    ]
    if sniffed not in family:
        return []
    return [sniffed, *(fmt for fmt in family if fmt != sniffed)]


def _ambiguous_dates(
    con: Any, name: str, source: str, codec: str, *, every_row: bool, watch: Watchdog | None
) -> tuple[list[str], list[tuple[str, str, bool]]]:
    """The DATE and TIMESTAMP columns of the CSV table `name` (read from `source`, its types guessed from
    `every_row` or from a sample) whose every value reads as a date in another order of its day, month
    and year too, differently: those are text. And those a value past the sniffed rows tells are in
    another order than the sniffed one, each with the SQL that reads its text in that order (as
    `_marked_columns` gives its columns, markers as NULL): they were text, where the README promised
    that a value anywhere tells the order (20,480 American dates of days up to 12, then `01/13/2024`).

    DuckDB's sniffer picks one of the orders that read every sampled value, whichever it tries first: an
    American `01/02/2024` (January 2nd) read as February 1st, and `01/02/24` as 2001-02-24, without a
    word. A column is a date only when its values tell the order (a `13/02/2024` anywhere: day first),
    or when every order that reads them all gives the same dates (`01/01/2024`).

    Only a CSV whose dates are not year first (ISO) is checked, from their text: its first 20,480 rows
    hold a value each other order cannot read as soon as the dates span a few weeks; an order they do
    not rule out is looked for further, a scan that stops at the first such value, and only a column no
    value tells is read whole (once more, for a value the two orders read differently). For a CSV of
    1,000,000 rows and 12 columns with a day-first date and timestamp, the check took 0.15 s (a sniff
    and the first rows) beside a profile's 2.2 s; with ISO dates, the sniff alone: 0.06 s.
    """
    described = _described(con, name)
    dated = {column: kind for column, kind in described if kind in ("DATE", "TIMESTAMP")}
    texts = [column for column, kind in described if kind == "VARCHAR"]
    if not dated and not (every_row and texts):
        return [], []
    sniff = f"SELECT Columns, DateFormat, TimestampFormat FROM sniff_csv({source}, {_CSV_STRICT}{codec}"  # noqa: S608
    sample = ", sample_size=-1" if every_row else ""
    _, *formats = con.execute(f"{sniff}{sample})").fetchall()[0]
    families = {column: _date_family(formats[kind == "TIMESTAMP"]) for column, kind in dated.items()}
    if every_row and texts:
        # Read from every row, a column of dates whose sniffed order a later value rules out is text: the
        # order the sniffer gave it from its first rows is the one that value may tell otherwise.
        columns, *first = con.execute(f"{sniff})").fetchall()[0]
        for column in texts:
            kind = next((str(c["type"]) for c in columns if c["name"] == column), "")
            if kind in ("DATE", "TIMESTAMP"):
                dated[column], families[column] = kind, _date_family(first[kind == "TIMESTAMP"])
    ambiguous, otherwise = _untold_orders(
        con, list(families.items()), source, codec, sample=sample, watch=watch
    )
    ambiguous = [column for column in ambiguous if column not in texts]
    reads = []
    for column, fmt in otherwise.items():
        _, read = _MARKED_FORMAT[dated[column]]
        value = read.format(f"trim({ident(column)})", dated[column], literal(fmt))
        col = ident(column)
        reads.append(
            (column, f"CASE WHEN {col} IN {_MARKERS} OR trim({col}) = '' THEN NULL ELSE {value} END", True)
        )
    return ambiguous, reads


def _untold_orders(
    con: Any,
    dated: list[tuple[str, list[str]]],
    source: str,
    codec: str,
    *,
    sample: str,
    watch: Watchdog | None,
) -> tuple[list[str], dict[str, str]]:
    """Those of the `dated` columns of the CSV `source` (each with its `_date_family`, sniffed format first)
    whose values no other order rules out and some other order reads differently (see `_ambiguous_dates`),
    and those whose sniffed order a value past the sniffed rows rules out while one other order reads them
    all, with that order's format. `codec` holds the reader's other arguments, `sample` its sample size."""
    # Each column's value, and its text read in the sniffed order and in each other order (as SQL).
    orders: list[tuple[str, str, str, str, str]] = []
    for column, family in dated:
        if not family:
            continue
        value = f"trim({ident(column)})"
        sniffed, *others = (f"try_strptime({value}, {literal(fmt)})" for fmt in family)
        orders += [
            (column, value, sniffed, other, fmt) for other, fmt in zip(others, family[1:], strict=True)
        ]
    if not orders:
        return [], {}
    texts = _as_text(list(dict.fromkeys(column for column, *_ in orders)))
    reader = f"read_csv({source}, {_CSV_STRICT}{codec}{sample}{texts})"

    fetch = partial(_fetch, con, watch=watch)

    # One scan of the first rows tells most orders apart; only those it does not are looked for further.
    cannot = [f"{value} <> '' AND {other} IS NULL" for _, value, _, other, _ in orders]
    any_cannot = ", ".join(f"bool_or({condition})" for condition in cannot)
    told = fetch(f"SELECT {any_cannot} FROM (SELECT * FROM {reader} LIMIT {SAMPLE_ROWS})")[0]  # noqa: S608
    # The other orders that read every value of each column, with the SQL of each.
    readers: dict[str, list[tuple[str, str, str, str]]] = {}
    for (column, value, sniffed, other, fmt), condition, seen in zip(orders, cannot, told, strict=True):
        if not seen and not fetch(f"SELECT 1 FROM {reader} WHERE {condition} LIMIT 1"):  # noqa: S608
            readers.setdefault(column, []).append((value, sniffed, other, fmt))
    ambiguous: list[str] = []
    otherwise: dict[str, str] = {}
    for column, readable in readers.items():
        value, sniffed = readable[0][:2]
        if fetch(f"SELECT 1 FROM {reader} WHERE {value} <> '' AND {sniffed} IS NULL LIMIT 1"):  # noqa: S608
            # A value past the sniffed rows rules the sniffed order out (`01/13/2024` after 20,480 dates
            # of days up to 12): the order that reads every value, when one alone does.
            if len(readable) == 1:
                otherwise[column] = readable[0][3]
            else:
                ambiguous.append(column)
        elif any(fetch(f"SELECT 1 FROM {reader} WHERE {o} <> {sniffed} LIMIT 1") for *_, o, _ in readable):  # noqa: S608
            ambiguous.append(column)  # another order reads every value, differently: nothing tells which
    return ambiguous, otherwise


#: What people write in a CSV for a missing value: pandas' default `na_values`, the list most users know a
#: reader to take as missing, and `-`, which spreadsheets print for an empty cell. DuckDB reads only an
#: empty field as NULL, so a column of numbers with one `NA` was text (`_marked_columns`).
NULL_MARKERS = (
    "NA", "N/A", "n/a", "NaN", "nan", "-NaN", "-nan", "null", "NULL", "None", "#N/A", "#N/A N/A", "#NA",
    "<NA>", "-1.#IND", "-1.#QNAN", "1.#IND", "1.#QNAN", "-",
)  # fmt: skip
_MARKERS = "(" + ", ".join(literal(marker) for marker in NULL_MARKERS) + ")"
#: The `read_csv` argument that reads an empty field and every marker as NULL.
_NULLSTR = ", nullstr=[" + ", ".join(literal(marker) for marker in ("", *NULL_MARKERS)) + "]"
#: The types a CSV column of markers and other values may be read as, with the SQL that tells a value's
#: text (`{0}`, trimmed, not empty, not a marker) that DuckDB's sniffer would not read as type `{1}` (in
#: the date format `{2}` when one was sniffed), and the SQL that reads it so. A cast is looser than the
#: sniffer (`1.5` casts to the integer 2, `1` to true): an integer's text must be the integer's own, a
#: boolean's a word.
_MARKED_INTEGER = ("{0} IS DISTINCT FROM CAST(TRY_CAST({0} AS {1}) AS VARCHAR)", "CAST({0} AS {1})")
_MARKED_CAST = ("TRY_CAST({0} AS {1}) IS NULL", "CAST({0} AS {1})")
_MARKED: dict[str, tuple[str, str]] = dict.fromkeys((*_INTEGERS, "UBIGINT"), _MARKED_INTEGER) | {
    "DOUBLE": _MARKED_CAST,
    "FLOAT": _MARKED_CAST,
    "TIME": _MARKED_CAST,
    "TIMESTAMP": _MARKED_CAST,
    # ISO timestamps with a UTC offset or `Z`, read in UTC as the table jobs run (`2024-01-02T10:00:00Z`
    # beside `NA` was text, its max `NA`). DuckDB's sniffer gives a time with an offset no type: it is text.
    "TIMESTAMP WITH TIME ZONE": _MARKED_CAST,
    "DATE": ("{0} IS DISTINCT FROM CAST(TRY_CAST({0} AS DATE) AS VARCHAR)", "CAST({0} AS DATE)"),
    "BOOLEAN": (
        "TRY_CAST({0} AS BOOLEAN) IS NULL OR NOT regexp_full_match({0}, '[A-Za-z]+')",
        "CAST({0} AS BOOLEAN)",
    ),
}  # fmt: skip
_MARKED_FORMAT = {
    "DATE": ("try_strptime({0}, {2}) IS NULL", "CAST(strptime({0}, {2}) AS DATE)"),
    "TIMESTAMP": ("try_strptime({0}, {2}) IS NULL", "strptime({0}, {2})"),
}
#: The floating-point columns, whose reader takes `nan` and `NaN` as a value: NaN, not a missing one.
_FLOATS = ("DOUBLE", "FLOAT")


def _not_nan(column: str) -> str:
    """The SQL of a floating-point `column` with its NaN as NULL, of the column's own type."""
    return f"CASE WHEN isnan({ident(column)}) THEN NULL ELSE {ident(column)} END"


def _marked_columns(
    con: Any,
    name: str,
    source: str,
    codec: str,
    *,
    every_row: bool,
    materialize: bool,
    watch: Watchdog | None,
) -> list[tuple[str, str, bool]]:
    """The columns of the CSV table `name` (read from `source`) that hold a null marker (`NULL_MARKERS`)
    among values of one type other than text: each with the SQL that reads it with its markers as NULL,
    and whether that SQL reads its text (the reader must then give it as text); none in most tables.

    DuckDB reads only an empty field as NULL: an R export's `NA` made a column of numbers text, whose
    profile had no mean, whose Parquet held strings, and which a query could not sum. Its `nullstr` takes
    markers for every column, though, where a country code `NA` (Namibia) among `FR` and `DE` is a value:
    only the columns that would read as numbers, dates, times or booleans without their markers are read
    so, from their text. The others, and a column of nothing but markers, read as before.

    The columns are found by sniffing the first rows with the markers as NULL: a text column that gets
    another type there is a candidate, and its values (the table's, or the file's for a view)
    are checked for a marker and for a value that type does not read. A column whose values are only
    read by another type (`1.5` among integers past the first rows) gets the type DuckDB's sniffer gives
    it from every row. Dates are read in their column's order only when a value tells it
    (`_untold_orders`). A floating-point column's `nan` read NaN, where the markers' list has it missing:
    a table's column that holds one, and a view's any, read NaN as NULL.

    For a CSV of 1,000,000 rows and 12 columns without a marker, the sniff and a table's NaN check took
    0.065 s beside a profile's 2.2 s; a view (a conversion) took 0.17 s more, its floating-point columns
    read again as not NaN. With markers in two columns, a table is read again: 0.2 s and the reading.
    """
    described = _described(con, name)
    texts = [column for column, kind in described if kind == "VARCHAR"]
    floats = [column for column, kind in described if kind in _FLOATS]
    if not texts and not floats:
        return []

    fetch = partial(_fetch, con, watch=watch)

    def sniffed(sample: str) -> dict[str, tuple[str, str | None]]:
        """Each column's type with the markers as NULL, and the date format sniffed for that type.

        By position: with the markers as NULL the sniffer may tell the header otherwise (a column `f` of
        `true`, `NA`, `false` reads as a file without one), and name its columns `column0`...; the checks
        that follow read the table's own values."""
        try:
            columns, date, timestamp = fetch(
                f"SELECT Columns, DateFormat, TimestampFormat FROM sniff_csv({source}, {_CSV_STRICT}{codec}"  # noqa: S608
                f"{_NULLSTR}{sample})"
            )[0]
        except READ_ERRORS:
            return {}  # the table reads; only its markers are left as they are
        if len(columns) != len(described):
            return {}
        formats = {"DATE": date or None, "TIMESTAMP": timestamp or None}
        return {
            name: (str(col["type"]), formats.get(str(col["type"])))
            for (name, _), col in zip(described, columns, strict=True)
        }

    guessed = sniffed("") if texts else {}
    candidates = [(column, *guessed[column]) for column in texts if guessed.get(column, ("",))[0] in _MARKED]
    nan_checked = floats if materialize else []  # a view's would be read once more: NaN is NULL there
    checks = [f"bool_or(isnan({ident(column)}))" for column in nan_checked]
    for column, kind, fmt in candidates:
        col = ident(column)
        misfit, _ = _MARKED_FORMAT[kind] if fmt is not None and kind in _MARKED_FORMAT else _MARKED[kind]
        value = f"trim({col})"
        checks += [
            f"bool_or({col} IN {_MARKERS})",
            f"bool_or({col} NOT IN {_MARKERS} AND {value} <> '' AND "
            f"({misfit.format(value, kind, literal(fmt or ''))}))",
        ]
    found: list[tuple[str, str, str | None]] = []
    unread: list[str] = []
    marked = [] if materialize else [(column, _not_nan(column), False) for column in floats]
    if checks:
        try:
            row = fetch(f"SELECT {', '.join(checks)} FROM {ident(name)}")[0]  # noqa: S608
        except READ_ERRORS as exc:
            if materialize or not resample(exc):
                raise
            return []  # a view's later row disagrees with its types: its reader reads it again from every row
        marked += [
            (column, _not_nan(column), False) for column, nan in zip(nan_checked, row, strict=False) if nan
        ]
        flags = row[len(nan_checked) :]
        for (column, kind, fmt), held, misfit in zip(candidates, flags[::2], flags[1::2], strict=True):
            if held and not misfit:
                found.append((column, kind, fmt))
            elif held:
                unread.append(column)
    if unread:
        # Another type reads these columns' every value: the one DuckDB gives them from every row.
        every = sniffed(", sample_size=-1")
        found += [(column, *every[column]) for column in unread if every.get(column, ("",))[0] in _MARKED]
    found = _not_spelled_otherwise(con, name, found, watch)
    dated = [(column, _date_family(fmt)) for column, kind, fmt in found if kind in ("DATE", "TIMESTAMP")]
    if dated:
        sample = ", sample_size=-1" if every_row else ""
        untold, otherwise = _untold_orders(con, dated, source, codec + _NULLSTR, sample=sample, watch=watch)
        found = [
            (column, kind, otherwise.get(column, fmt)) for column, kind, fmt in found if column not in untold
        ]
    for column, kind, fmt in found:
        _, read = _MARKED_FORMAT[kind] if fmt is not None and kind in _MARKED_FORMAT else _MARKED[kind]
        col = ident(column)
        value = read.format(f"trim({col})", kind, literal(fmt or ""))
        marked.append(
            (column, f"CASE WHEN {col} IN {_MARKERS} OR trim({col}) = '' THEN NULL ELSE {value} END", True)
        )
    return marked


def _not_spelled_otherwise(
    con: Any, name: str, found: list[tuple[str, str, str | None]], watch: Watchdog | None
) -> list[tuple[str, str, str | None]]:
    """The `found` columns of the CSV table `name` to read with their markers as NULL (`_marked_columns`),
    but those of integers that hold one spelled otherwise (`0x10` beside `NA`), which stay text as they do
    without markers (`_integers_spelled_otherwise`): read so, `0x10` was 16."""
    integers = [column for column, kind, _ in found if kind in _WHOLE_NUMBERS]
    spelled = _spelled_otherwise(con, ident(name), integers, watch) if integers else set()
    return [marks for marks in found if marks[0] not in spelled]


def _run(con: Any, sql: str, watch: Watchdog | None) -> None:
    if watch is None:
        con.execute(sql)
    else:
        watch.fetch(sql)


def _fetch(con: Any, sql: str, watch: Watchdog | None) -> list[tuple[Any, ...]]:
    """The rows of `sql`, run under `watch` when there is one."""
    rows: list[tuple[Any, ...]] = watch.fetch(sql) if watch is not None else con.execute(sql).fetchall()
    return rows


def _row_count(con: Any, name: str) -> int:
    """The rows of the table `name`."""
    return int(con.execute(f"SELECT count(*) FROM {ident(name)}").fetchone()[0])  # noqa: S608


def _described(con: Any, name: str) -> list[tuple[str, str]]:
    """The columns of the table or view `name`, each with its DuckDB type."""
    return [(str(row[0]), str(row[1])) for row in con.execute(f"DESCRIBE {ident(name)}").fetchall()]


def _reject_ragged_single_column(con: Any, name: str, source: str, codec: str, dialect: str) -> None:
    """Fail on a delimited file whose rows disagree, which DuckDB's sniffer reads as one column of lines
    (`codec`: the reader's arguments, but its `header` and `_quoting`, `dialect`, which the check's own
    reading sets).

    When no delimiter gives every sampled row the same field count, DuckDB does not fail: it falls back to
    a dialect where each whole line is one field. So a one-column result whose first lines split on
    another delimiter is re-read strictly with that delimiter, which fails naming the first bad line.
    """
    columns = [str(row[0]) for row in con.execute(f"DESCRIBE {ident(name)}").fetchall()]
    if len(columns) != 1:
        return
    sniffed = con.execute(
        f"SELECT Delimiter, HasHeader FROM sniff_csv({source}, {_CSV_STRICT}{codec}{dialect})"  # noqa: S608
    ).fetchall()[0]
    delimiter, has_header = sniffed[0], bool(sniffed[1])
    col = ident(columns[0])
    sample = [
        row[0]
        for row in con.execute(
            f"SELECT CAST({col} AS VARCHAR) FROM {ident(name)} WHERE {col} IS NOT NULL LIMIT 20"  # noqa: S608
        ).fetchall()
    ]
    lines = ([columns[0]] if has_header else []) + sample
    if not lines:
        return
    for candidate in _DELIMITERS:
        if candidate == delimiter:
            continue
        widths = [len(next(csv.reader([line], delimiter=candidate), [])) for line in lines]
        if widths[0] < 2 and sum(width > 1 for width in widths) < 2:
            continue
        try:
            con.execute(
                f"SELECT 1 FROM sniff_csv({source}, delim={literal(candidate)}, "  # noqa: S608
                f"{_CSV_STRICT}{codec}{dialect})"
            ).fetchall()
        except duckdb.InvalidInputException:
            pass  # no consistent dialect with this delimiter: the rows are ragged
        else:
            continue
        expected = max(widths[0], 1)
        columns_spec = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(expected)) + "}"
        con.execute(
            f"SELECT count(*) FROM read_csv({source}, auto_detect=false, header=false, "  # noqa: S608
            f"delim={literal(candidate)}{_RFC_QUOTING}, columns={columns_spec}, "
            f"{_CSV_STRICT}{codec})"
        ).fetchall()
        shown = "tab" if candidate == "\t" else repr(candidate)
        raise UnsupportedInput(f"not a readable csv table: rows disagree on their number of {shown} fields")
