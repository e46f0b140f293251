"""Decide whether one Cypher statement is a pure read: the guard of every read path.

Why a tokenizer and not a keyword regex: a regex does not know where comments, strings and
backquoted names end, so a quote inside a comment, a digit glued to a keyword (``1LOAD``) or a
line end the regex does not count (a bare ``\\r``) hides a write from it. Here the statement is
cut into tokens and accepted only when it is one statement made of reading clauses (MATCH,
OPTIONAL MATCH, WHERE, WITH, UNWIND, RETURN, ORDER BY, SKIP, LIMIT, UNION [ALL] and
LadybugDB's HINT lines) and functions on an explicit allow-list of pure functions; any other
word in a clause position, any other function, a second statement, or a character the
tokenizer does not know is refused.

Why several lexings: the backends disagree on details that decide what is code and what is
text: which characters end a ``//`` comment (LadybugDB: ``\\n``; ArcadeDB and Neo4j: ``\\r``
too; other lexers: unicode line separators), whether a doubled quote is an escaped quote,
whether a backslash or a doubled backquote escapes inside a backquoted name, whether
``\\uXXXX`` is decoded before lexing. (A backslash escapes inside strings on every backend.) A
statement is accepted only when it is a pure read under every one of these readings that can
differ on its text, so no quote or line end can be code for the database and text for the guard.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

# Clause and operator words of reading statements (upper case). A word here is never refused.
READ_WORDS = frozenset("""
    MATCH OPTIONAL WHERE WITH UNWIND RETURN ORDER BY SKIP LIMIT UNION ALL DISTINCT AS ASC
    ASCENDING DESC DESCENDING AND OR XOR NOT IN IS NULL TRUE FALSE CASE WHEN THEN ELSE END
    STARTS ENDS CONTAINS EXISTS COUNT COLLECT HINT JOIN MULTI_JOIN
""".split())
# The words a statement (or a query after UNION) may start with.
START_WORDS = frozenset({"MATCH", "OPTIONAL", "UNWIND", "WITH", "RETURN"})
# Words that start or take part in clauses that write, touch files, the catalog, extensions,
# settings or transactions, on any backend we know (refused wherever they stand, except as a
# name: after AS, '.', ':', '$' or inside backquotes). Other clause words are caught by
# position: a word right after a complete expression is refused unless it is in READ_WORDS.
WRITE_WORDS = frozenset("""
    CREATE MERGE SET DELETE DETACH REMOVE DROP ALTER RENAME COPY LOAD INSTALL UNINSTALL UPDATE
    UPSERT INSERT CHECKPOINT ATTACH USE BEGIN COMMIT ROLLBACK TRANSACTION EXPORT IMPORT CALL
    YIELD FOREACH EXPLAIN PROFILE SHOW TERMINATE GRANT REVOKE DENY PERIODIC USING FINISH
    ANALYZE PRAGMA TRUNCATE VACUUM
""".split())
# Pure functions of their arguments (lower case): aggregates, arithmetic, strings, lists,
# conversions, temporal values, list predicates. Nothing that reads files or URLs, lists the
# catalog, reads settings or calls procedures (READ_CSV, READ_PARQUET, READ_NPY, apoc.*, ...).
FUNCTIONS = frozenset("""
    count sum avg min max collect stdev stdevp percentilecont percentiledisc
    abs ceil floor round sign sqrt exp ln log log10 log2 e pi sin cos tan asin acos atan atan2
    cot degrees radians rand isnan greatest least
    tofloat tointeger toint tostring toboolean tofloatornull tointegerornull tostringornull
    tobooleanornull cast
    tolower toupper lower upper lcase ucase trim ltrim rtrim substring substr left right replace
    split reverse size length concat lpad rpad repeat initcap prefix suffix starts_with
    ends_with string_split
    head last tail range keys labels label type id elementid properties nodes relationships
    rels coalesce nullif exists isempty startnode endnode reduce any all none single
    list_contains list_has list_extract list_element list_sort list_reverse_sort list_distinct
    list_unique list_sum list_product list_concat list_cat list_slice list_position
    list_filter list_transform list_reduce array_contains array_extract array_slice
    date datetime timestamp duration localdatetime localtime time
""".split())

# Characters some lexer may take as the end of a `//` comment (Python's line boundaries).
LINE_ENDS_ALL = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
_LINE_END_READINGS = (frozenset("\n"), frozenset("\n\r"), LINE_ENDS_ALL)
_NUMBER = re.compile(r"0[xX][0-9A-Fa-f_]+|0[oO][0-7_]+|[0-9][0-9_]*(?:\.[0-9][0-9_]*)?(?:[eE][+-]?[0-9]+)?")
_WORD = re.compile(r"[^\W\d]\w*")
_WORD_CHAR = re.compile(r"\w")
_DIGITS = re.compile(r"[0-9]+")
_PUNCT = ("->", "<-", "<>", "<=", ">=", "=~", "!=", "..", "::", *"()[]{},.;:+-*/%^=<>|!&")
_UNICODE_ESCAPE = re.compile(r"\\u([0-9A-Fa-f]{4})")
_EXPR_END_PUNCT = frozenset({")", "]", "}"})


class Refused(Exception):
    """Raised inside the scan: what was found and where (an offset into the scanned text)."""

    def __init__(self, token: str, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.token, self.offset, self.reason = token, offset, reason


@dataclass(frozen=True)
class Refusal:
    """Why a statement is not a pure read: the token, its line and column (1-based), the reason,
    and, when only some lexing finds it, which one."""

    token: str
    line: int
    column: int
    reason: str
    reading: str = ""

    def __str__(self) -> str:
        shown = self.token if len(self.token) <= 40 else self.token[:37] + "..."
        note = f" (when {self.reading})" if self.reading else ""
        return f"{shown!r} at line {self.line}, column {self.column}: {self.reason}{note}"


class _Lexing(NamedTuple):
    line_ends: frozenset[str]  # what ends a `//` comment
    doubled_quotes: bool  # '' inside a string is an escaped quote (a backslash always escapes)
    name_backslash: bool  # a backslash escapes the next character in a backquoted name
    name_doubled: bool  # `` inside a backquoted name is an escaped backquote
    unicode_first: bool  # \uXXXX is decoded before lexing

    def describe(self) -> str:
        parts = []
        if self.line_ends == frozenset("\n"):
            parts.append("a // comment ends only at \\n")
        elif self.line_ends == LINE_ENDS_ALL:
            parts.append("a // comment ends at any unicode line break")
        if self.doubled_quotes:
            parts.append("a doubled quote is an escaped quote")
        if self.name_backslash:
            parts.append("a backslash escapes in backquoted names")
        if not self.name_doubled:
            parts.append("a doubled backquote ends a name")
        if self.unicode_first:
            parts.append("\\u escapes are decoded before lexing")
        return " and ".join(parts)


# The usual reading: ArcadeDB and Neo4j end a `//` comment at \n or \r (LadybugDB 0.22 at \n; a
# bare \r after a comment is a syntax error there); the other escapes as every backend does.
_DEFAULT = _Lexing(frozenset("\n\r"), False, False, True, False)


class Token(NamedTuple):
    kind: str  # word, name (backquoted), str, num, param, punct
    text: str  # as written (a backquoted name without its quotes)
    start: int


def _readings(text: str) -> list[_Lexing]:
    """The lexings that can differ on this text, the usual one first."""
    ends = _LINE_END_READINGS if any(c in LINE_ENDS_ALL for c in text if c != "\n") else (_DEFAULT.line_ends,)
    doubled = (False, True) if ("''" in text or '""' in text) else (False,)
    name_slash = (False, True) if ("\\" in text and "`" in text) else (False,)
    name_doubled = (True, False) if "``" in text else (True,)
    uni = (False, True) if _UNICODE_ESCAPE.search(text) else (False,)
    out = [_DEFAULT]
    for combo in itertools.product(ends, doubled, name_slash, name_doubled, uni):
        lexing = _Lexing(*combo)
        if lexing not in out:
            out.append(lexing)
    return out


def _quoted(text: str, i: int, backslash: bool, doubled: bool) -> int:
    """The offset just past the string or backquoted name that opens at ``i``."""
    quote, j, n = text[i], i + 1, len(text)
    while j < n:
        c = text[j]
        if c == "\\" and backslash:
            j += 2
            continue
        if c == quote:
            if doubled and j + 1 < n and text[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    what = "backquoted name" if quote == "`" else "string"
    raise Refused(text[i:i + 20], i, f"unterminated {what}")


def _quoted_by(text: str, i: int, lexing: _Lexing) -> int:
    if text[i] == "`":
        return _quoted(text, i, lexing.name_backslash, lexing.name_doubled)
    return _quoted(text, i, True, lexing.doubled_quotes)


def tokens(text: str, lexing: _Lexing = _DEFAULT, out: list[Token] | None = None) -> list[Token]:
    """The statement's tokens under one lexing (appended to ``out``); comments and whitespace
    dropped. Raises Refused on anything a reading statement cannot hold at the character level."""
    out = [] if out is None else out
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif text.startswith("//", i):
            j = i + 2
            while j < n and text[j] not in lexing.line_ends:
                j += 1
            i = j
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise Refused("/*", i, "unterminated comment")
            nested = text.find("/*", i + 2, end)
            if nested >= 0:
                raise Refused("/*", nested, "a comment opened inside a comment")
            i = end + 2
        elif c in "'\"`":
            j = _quoted_by(text, i, lexing)
            kind = "name" if c == "`" else "str"
            if kind == "str" and out and out[-1].kind == "str":
                raise Refused(text[i:j], i, "two strings in a row")
            out.append(Token(kind, text[i + 1:j - 1], i))
            i = j
        elif c == "$":
            m = _WORD.match(text, i + 1) or _DIGITS.match(text, i + 1)
            if m:
                out.append(Token("param", m.group(), i))
                i = m.end()
            elif text.startswith("`", i + 1):
                j = _quoted_by(text, i + 1, lexing)
                out.append(Token("param", text[i + 2:j - 1], i))
                i = j
            else:
                raise Refused("$", i, "a parameter needs a name right after '$'")
        elif "0" <= c <= "9":
            m = _NUMBER.match(text, i)
            j = m.end()
            glued = _WORD.match(text, j) or (_WORD.match(text, j + 1) if text.startswith(".", j) else None)
            if glued or (j < n and _WORD_CHAR.match(text[j])):
                word = glued.group() if glued else text[j]
                raise Refused(word, glued.start() if glued else j, f"a word glued to the number {m.group()}")
            out.append(Token("num", m.group(), i))
            i = j
        elif _WORD.match(text, i):
            m = _WORD.match(text, i)
            if not m.group().isascii():  # lexers differ on case folding and normalization (ı, K, ＤＥＬＥＴＥ)
                raise Refused(m.group(), i, "a name with non-ASCII letters must be in backquotes")
            out.append(Token("word", m.group(), i))
            i = m.end()
        else:
            p = next((p for p in _PUNCT if text.startswith(p, i)), None)
            if p is None:
                raise Refused(c, i, f"unexpected character U+{ord(c):04X}")
            out.append(Token("punct", p, i))
            i += len(p)
    return out


def _word(t: Token | None, *words: str) -> bool:
    return t is not None and t.kind == "word" and t.text.upper() in words


def _punct(t: Token | None, *marks: str) -> bool:
    return t is not None and t.kind == "punct" and t.text in marks


_STARTS = "a read starts with MATCH, OPTIONAL MATCH, UNWIND, WITH or RETURN"


def _check(toks: list[Token]) -> None:
    """Raise Refused unless the tokens form one statement of reading clauses and listed functions."""
    if not toks:
        raise Refused("", 0, "empty statement")
    if not _word(toks[0], *START_WORDS):
        raise Refused(toks[0].text, toks[0].start, _STARTS)
    expr_end = False  # the previous token ends an expression: a clause word may follow, a variable may not
    for k, t in enumerate(toks):
        prev = toks[k - 1] if k else None
        nxt = toks[k + 1] if k + 1 < len(toks) else None
        up = t.text.upper()
        if _punct(t, ";") and nxt is not None:
            raise Refused(nxt.text, nxt.start, "a second statement after ';' (one statement only)")
        if t.kind in ("word", "name") and _punct(nxt, "("):
            if t.kind == "word" and up in READ_WORDS and not _punct(prev, "."):
                expr_end = False
            elif _punct(prev, "."):
                raise Refused(t.text, t.start, "namespaced functions and procedures are not allowed on a read path")
            elif t.text.lower() not in FUNCTIONS:
                raise Refused(t.text, t.start, "not a function on the read allow-list")
            expr_end = False
            continue
        if t.kind != "word":
            expr_end = t.kind in ("name", "str", "num", "param") or t.text in _EXPR_END_PUNCT
            continue
        if _punct(prev, ".", ":", "::") or _word(prev, "AS") or (_punct(prev, "{", ",") and _punct(nxt, ":")):
            # a property, label, type, alias or map key
            expr_end = True
            continue
        if up == "UNION" or (up == "ALL" and _word(prev, "UNION")):
            if not (_word(nxt, *START_WORDS) or (up == "UNION" and _word(nxt, "ALL"))):
                where = nxt or t
                raise Refused(where.text, where.start, "a query after UNION: " + _STARTS)
        if up in READ_WORDS:
            expr_end = up in ("NULL", "TRUE", "FALSE", "END")
            continue
        if up in WRITE_WORDS:
            raise Refused(t.text, t.start, "not a reading clause")
        if expr_end:
            raise Refused(t.text, t.start, "not a reading clause (a word right after a complete expression)")
        if _punct(prev, "{") and not _punct(nxt, ":", ",", "}"):
            raise Refused(t.text, t.start, "not a reading clause (a word opening a '{' block)")
        expr_end = True  # a variable


def _lexed(text: str, lexing: _Lexing) -> list[Token]:
    """The tokens, or on a lexing error the clause check of what came before it (a write ahead of
    an unterminated string is named as the write)."""
    partial: list[Token] = []
    try:
        return tokens(text, lexing, partial)
    except Refused as lex_error:
        if partial:
            _check(partial)
        raise lex_error


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _decoded(text: str) -> tuple[str, list[int]]:
    """``text`` with \\uXXXX decoded, and for each of its characters the offset it came from."""
    out, where, last = [], [], 0
    for m in _UNICODE_ESCAPE.finditer(text):
        out.append(text[last:m.start()])
        where.extend(range(last, m.start()))
        out.append(chr(int(m.group(1), 16)))
        where.append(m.start())
        last = m.end()
    out.append(text[last:])
    where.extend(range(last, len(text) + 1))
    return "".join(out), where


@lru_cache(maxsize=2048)
def refusal(cypher: str) -> Refusal | None:
    """None when ``cypher`` is one pure read under every lexing that can differ on it, else the
    first thing that is not (the usual lexing's findings first)."""
    if not isinstance(cypher, str):
        return Refusal(type(cypher).__name__, 1, 1, "a statement must be text")
    for lexing in _readings(cypher):
        text, where = _decoded(cypher) if lexing.unicode_first else (cypher, None)
        try:
            _check(_lexed(text, lexing))
        except Refused as r:
            offset = where[r.offset] if where is not None else r.offset
            line, col = _position(cypher, offset)
            return Refusal(r.token, line, col, r.reason, "" if lexing == _DEFAULT else lexing.describe())
    return None


def without_terminator(cypher: str) -> str:
    """The statement without a final ``;`` (LadybugDB accepts one, ArcadeDB does not when a
    comment follows it); the text is unchanged otherwise."""
    toks = tokens(cypher) if refusal(cypher) is None else []
    if toks and toks[-1].kind == "punct" and toks[-1].text == ";":
        at = toks[-1].start
        return cypher[:at] + cypher[at + 1:]
    return cypher


def offending_token(cypher: str) -> str | None:
    """The refused token (upper case when it is a word), or None for a pure read."""
    r = refusal(cypher)
    if r is None:
        return None
    return r.token.upper() if _WORD.fullmatch(r.token or "") else (r.token or r.reason)


def require_read(cypher: str, where: str = "read-only statement refused") -> None:
    """Raise ReadOnlyViolation (one line: ``WHERE: TOKEN at line L, column C: reason``) unless
    ``cypher`` is one pure read."""
    r = refusal(cypher)
    if r is not None:
        from circuit_atlas.store.base import ReadOnlyViolation

        raise ReadOnlyViolation(f"{where}: {r}")
