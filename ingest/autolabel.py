"""Automatic feature labels from evidence: what a feature fires on and what it promotes.

A label reads ``INPUTS → OUTPUTS``, e.g. ``Texas, Dallas → Austin``:

- INPUTS: the tokens the feature is most active on, one per top-activating context, grouped by
  their visible form (a word's leading space dropped, so ``" Texas"`` and ``"Texas"`` are one;
  whitespace-only tokens spelled with marks: ␣ space, ↵ line break, ⇥ tab), most frequent
  first, then strongest, then alphabetical (so the label is deterministic); a token holding a
  separator (``,`` ``→`` ``"`` ``…``) is quoted (``","``, ``'"'``). At most
  ``max_inputs`` are shown. When the shown tokens cover less than ``min_coverage`` of the
  contexts, the feature fires on many different tokens: if the token *before* the active one is
  consistent instead, the inputs read ``after of, in``; otherwise ``, …`` says there is more.
- OUTPUTS: the tokens whose logits the feature's direct effect raises most, kept only when they
  stand out of the vocabulary: at least ``z_min`` standard deviations of the feature's
  de-meaned logit vector above its mean, where ``z_min = sqrt(2 ln V) + 2`` for a vocabulary of
  V tokens (``sqrt(2 ln V)`` is about the largest of V draws of pure noise; the margin of 2 is
  for real unembeddings' heavier tails: 0.3% of random directions pass SmolLM2's, see
  docs/concepts/labels.md). Without such tokens the logits are *flat* and no arrow is written.

The label is marked ``(weak) `` when the evidence cannot carry it: fewer than ``min_contexts``
contexts, or diffuse inputs with flat logits. A feature with no context at all gets no label
(``text`` None): nothing to say is better than a guess.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

WEAK = "(weak) "
ARROW = " → "
MORE = "…"
# the same marks the app uses for whitespace (app/graph_view.py WHITESPACE)
MARKS = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}
_NEEDS_QUOTES = (",", "→", '"', MORE)


@dataclass(frozen=True)
class LabelRule:
    """The knobs of the rule (the defaults are what `circuit-atlas features` uses)."""

    max_inputs: int = 3
    max_outputs: int = 3
    min_contexts: int = 5
    min_coverage: float = 0.5
    z_margin: float = 2.0  # z_min = sqrt(2 ln V) + z_margin
    max_chars: int = 20  # per token shown


@dataclass(frozen=True)
class AutoLabel:
    """A feature's automatic label and the evidence behind it."""

    text: str | None  # None: no evidence (no context), no label
    weak: bool = False
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    coverage: float = 0.0  # share of the contexts whose token (or previous token) is shown
    why: str = ""  # one line: what made it weak, or how it was read
    notes: dict[str, Any] = field(default_factory=dict)


def token_form(token: str) -> str:
    """A token as a label shows it: one leading space of a word dropped, whitespace-only tokens
    as visible marks, line breaks inside a token as a mark (a label stays one line)."""
    token = str(token)
    if token and not token.strip():
        return "".join(MARKS.get(ch, ch) for ch in token)
    if token.startswith(" ") and token[1:2].strip():
        token = token[1:]
    return token.replace("\r", "").replace("\n", MARKS["\n"]).replace("\t", MARKS["\t"])


def _show(form: str, max_chars: int) -> str:
    if len(form) > max_chars:
        form = form[: max_chars - 1] + MORE
    if any(ch in form for ch in _NEEDS_QUOTES) or form != form.strip():
        if '"' in form and "'" not in form:
            return f"'{form}'"  # '"' reads better than "\""
        return json.dumps(form, ensure_ascii=False)
    return form


def _ranked(pairs: Iterable[tuple[str, float]]) -> list[tuple[str, int, float]]:
    """(form, count, max activation) of each distinct visible form: most frequent, then
    strongest, then alphabetical."""
    count: dict[str, int] = defaultdict(int)
    top: dict[str, float] = defaultdict(lambda: -math.inf)
    for tok, act in pairs:
        form = token_form(tok)
        if not form:
            continue
        count[form] += 1
        top[form] = max(top[form], float(act))
    return sorted(((f, count[f], top[f]) for f in count), key=lambda x: (-x[1], -x[2], x[0]))


def z_min(vocab_size: int, margin: float = LabelRule.z_margin) -> float:
    """How many standard deviations a promoted logit must stand above the mean to count."""
    return math.sqrt(2.0 * math.log(max(int(vocab_size), 2))) + margin


def strong_outputs(effects: dict[str, Any], rule: LabelRule = LabelRule()) -> tuple[list[str], float | None]:
    """The promoted tokens that stand out (see the module docstring) and the top one's z-score
    (None when the effects carry no spread to judge them by)."""
    std, vocab = effects.get("std"), effects.get("vocab")
    promoted = effects.get("promoted") or []
    if not promoted or not std or not vocab or std <= 0:
        return [], None
    bar = z_min(vocab, rule.z_margin)
    out: list[str] = []
    for tok, val in promoted:
        if float(val) / std < bar:
            break  # promoted is sorted, strongest first
        form = token_form(tok)
        if form and form not in out:
            out.append(form)
        if len(out) == rule.max_outputs:
            break
    return out, float(promoted[0][1]) / std


def auto_label(contexts: list[dict[str, Any]], effects: dict[str, Any] | None,
               rule: LabelRule = LabelRule()) -> AutoLabel:
    """The label of one feature from its stored top contexts (``token``, ``activation``, and
    ``prev``, the token before it, where known) and logit effects (``promoted`` [token, value]
    strongest first, ``std`` and ``vocab`` of the de-meaned logit vector)."""
    ctx = [c for c in contexts or [] if isinstance(c, dict) and c.get("token") is not None]
    if not ctx:
        return AutoLabel(None, why="no top-activating context")
    n = len(ctx)
    ranked = _ranked((c["token"], c.get("activation") or 0.0) for c in ctx)
    shown = ranked[: rule.max_inputs]
    coverage = sum(c for _, c, _ in shown) / n
    inputs = [_show(f, rule.max_chars) for f, _, _ in shown]
    part, how = ", ".join(inputs), "fires on"
    diffuse = coverage < rule.min_coverage
    if diffuse:
        prev = [(c["prev"], c.get("activation") or 0.0) for c in ctx if c.get("prev")]
        before = _ranked(prev)[: rule.max_inputs]
        prev_cov = sum(c for _, c, _ in before) / n
        if before and prev_cov >= rule.min_coverage:
            inputs = [_show(f, rule.max_chars) for f, _, _ in before]
            part, how, coverage, diffuse = "after " + ", ".join(inputs), "fires after", prev_cov, False
        else:
            part += ", " + MORE
    outputs, z = strong_outputs(effects or {}, rule)
    text = part + (ARROW + ", ".join(_show(o, rule.max_chars) for o in outputs) if outputs else "")
    reasons = []
    if n < rule.min_contexts:
        reasons.append(f"only {n} context{'s' if n != 1 else ''}")
    if diffuse and not outputs:
        reasons.append(f"diffuse inputs ({coverage:.0%} of contexts shown) and flat logits")
    weak = bool(reasons)
    why = "; ".join(reasons) if weak else (f"{how} {coverage:.0%} of contexts shown"
                                           + (f", top logit z={z:.1f}" if outputs and z is not None else ", flat logits"))
    return AutoLabel(WEAK + text if weak else text, weak, tuple(inputs), tuple(outputs), coverage, why,
                     {"contexts": n, "z": z})
