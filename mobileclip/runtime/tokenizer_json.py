"""CLIP's BPE as a Hugging Face ``tokenizer.json`` (the runtime tokenizer that uses it: :mod:`.hf_tokenizer`).

Every bundle can carry a ``tokenizer.json`` that the ``tokenizers`` library (Rust; Python,
Node and Kotlin/Java bindings) and its ports (transformers.js, swift-transformers) load,
so apps tokenize without our Python code. It uses only standard components:

* **normalizer** - a ``Sequence`` of ``Replace``/``NFC``/``Strip``/``Lowercase`` steps
  that re-creates open_clip's cleaning (``ftfy.fix_text``, ``html.unescape`` twice,
  whitespace collapse, ``str.lower``) as far as fixed string rewriting can (below);
* **pre-tokenizer** - ``Split`` with CLIP's regex (its ``IGNORECASE`` spelled out as
  character classes), then ``ByteLevel`` without its own regex;
* **model** - ``BPE`` with CLIP's vocabulary (49408) and the first 48894 merges of
  ``bpe_simple_vocab_16e6.txt.gz``, derived exactly as :class:`~.tokenizer.ClipBPE`
  does, ``end_of_word_suffix="</w>"``;
* **post-processor** - ``TemplateProcessing`` ``<start_of_text> $A <end_of_text>``;
* **truncation** to the context length *before* the two special tokens are added (so
  a long text keeps its start token, the first ``context_length - 2`` tokens and the
  end token - open_clip's ``tokens[:C]; tokens[-1] = eot``) and fixed **padding** to
  the context length with ``pad_id`` (open_clip pads with 0).

What the normalizer reproduces exactly:

* ftfy's ``unescape_html`` of covered entities (below), with its rule that a line with
  ``<`` - and every line after it - is not unescaped, and its loop-until-stable for
  ``&amp;`` chains. Only the entities whose text ftfy's later fixes would change are
  decoded at that stage (curly quotes, ligatures, C1 and control characters, NFC
  singletons); html.unescape decodes the others to the same text later;
* ftfy's ``fix_c1_controls`` (Windows-1252), ``fix_latin_ligatures``,
  ``fix_character_width``, ``uncurl_quotes``, ``remove_terminal_escapes``,
  ``remove_control_chars`` and NFC (``fix_line_breaks`` and ``fix_surrogates`` do not
  change tokens: line breaks are whitespace, and Rust strings hold no surrogates -
  :class:`HFTokenizer` fixes those in Python);
* ``html.unescape`` twice, for the covered entities: numeric references to the code
  points of :data:`NUMERIC_REFS` and of the HTML 4 entities, in every spelling
  (decimal or hex, any leading zeros, with or without ``;``), and every HTML5 name of
  those characters (692 of the 2231 names, e.g. ``&rsquo;`` ``&nbsp;`` ``&eacute;``
  ``&copy`` ``&notit;``), with or without ``;`` by the longest-prefix rule;
* whitespace: Python's ``str.split()`` set (incl. U+001C-U+001F) collapsed to one
  space, then stripped;
* ``str.lower()`` including Greek final sigma (Rust lower-cases per character);
* CLIP's regex with ``IGNORECASE`` (``'ſ`` is the contraction ``'s``; U+0345, which
  the ignore-case classes match nowhere, splits pieces and is dropped).

What it cannot express (ids then differ from open_clip's):

* ftfy's ``fix_encoding``: mojibake such as ``cafÃ©`` -> ``café``, and its helpers
  ``restore_byte_a0``, ``replace_lossy_sequences``, ``decode_inconsistent_utf8``,
  which also fire on some plain mixes (``”É`` -> ``Ӄ``, ``ß\ufffd`` -> ``\ufffd``). It
  scores candidate re-decodings; no fixed rewriting is equivalent;
* entities outside the coverage: numeric references to other code points
  (``&#128512;``), HTML5 names of other characters (``&ltimes;``, ``&copysr;``), ftfy's
  all-caps names (``&EACUTE;``), and spellings of ``$``/``\\`` references other than
  ``&#36;``/``&#036;``/``&#x24;``/``&dollar;`` (resp. 92/5C/``&bsol;``);
* entity text that only appears after a decode or a fix (``&lt&#59;``; full-width
  ``＆ｒｓｑｕｏ；`` on a line without ``<``, which ftfy decodes in its next round);
* a ``<`` more than :data:`LOOKBEHIND` characters before the entity (the rule is a
  bounded look-behind so that ICU/Swift can compile it; it shows only when those
  characters are mostly whitespace, as 77 tokens come from far fewer characters);
* ``<start_of_text>``/``<end_of_text>`` typed right after punctuation (open_clip's regex
  folds the ``<`` into the punctuation run; ``tokenizers`` matches special tokens anywhere);
* the noncharacter U+FDD0 in the input (the internal marker, read back as ``&``);
* characters assigned after the Unicode version of the Python that runs open_clip
  (3.11: Unicode 14; Rust's tables are newer): lower-casing and ``\\p{L}`` differ.

The normalizer has ~670 steps (about 0.4 ms per caption in Rust ``tokenizers``).

:class:`HFTokenizer`, the Python runtime's tokenizer, cleans text in Python (ftfy,
``html.unescape``, ``str.lower``: ``clean="python"``, the default when ftfy is installed)
and leaves the regex split, BPE, special tokens, truncation and padding to ``tokenizers``,
so its ids equal :class:`~.tokenizer.ClipBPE`'s (only letters assigned in the newest
Unicode versions may split differently: Oniguruma's tables against the ``regex``
module's). Apps on other platforms run the JSON's normalizer (``clean="json"``).
"""
from __future__ import annotations

import html
import html.entities
import json
import os
import unicodedata
from pathlib import Path
from typing import List, Sequence, Tuple, Union

from .tokenizer import SPECIAL_TOKENS, TokenizerError, bytes_to_unicode, read_merges


AMP_MARK = "\ufdd0"                 # a noncharacter: marks '&' that ftfy would not unescape
LOOKBEHIND = 4096                   # how far back a '<' is seen (ICU needs a bounded look-behind)

# Code points whose numeric references the normalizer decodes in every spelling html.unescape reads
# (decimal or hex, any leading zeros, with or without ";").
NUMERIC_REFS: Tuple[range, ...] = (
    range(0x00, 0x180),      # ASCII, C1 (as Windows-1252), Latin-1, Latin Extended-A
    range(0x2BC, 0x2BD),     # modifier apostrophe (ftfy uncurls it)
    range(0x2000, 0x2070),   # General Punctuation: spaces, dashes, quotes, ellipsis, invisible marks
    range(0x20AC, 0x20AD),   # euro
    range(0x2122, 0x2123),   # trade mark
    range(0x3000, 0x3001),   # ideographic space
    range(0xFB00, 0xFB07),   # Latin ligatures (ftfy splits them)
    range(0xFEFF, 0xFF00),   # byte order mark (ftfy removes it)
    range(0xFFF9, 0xFFFD),   # interlinear annotation marks (ftfy removes them)
)   # plus the characters of the HTML 4 entities (html.entities.name2codepoint)

# CLIP's regex (open_clip ``SimpleTokenizer.pat``), compiled there with IGNORECASE.
CLIP_PATTERN = ("<start_of_text>|<end_of_text>"
                 r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")


def clip_vocab(merges: Sequence[Tuple[str, str]]) -> List[str]:
    """Tokens by id: 256 byte symbols, the same with ``</w>``, one per merge, the two special tokens."""
    byte_symbols = list(bytes_to_unicode().values())
    return byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)


def _string(pattern: str, content: str) -> dict:
    return {"type": "Replace", "pattern": {"String": pattern}, "content": content}


def _regex(pattern: str, content: str) -> dict:
    # Regex contents stay free of '$' and '\\' (swift-transformers uses them as a template).
    assert "$" not in content and "\\" not in content
    return {"type": "Replace", "pattern": {"Regex": pattern}, "content": content}


def _char_class(codepoints) -> str:
    """A regex character class of code points, as ranges, with escapes every engine reads alike."""
    def esc(c: int) -> str:
        return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" if c < 0x10000 else f"\\u{{{c:x}}}"

    cps = sorted(set(codepoints))
    assert cps and cps[-1] < 0x10000, "astral code points are not supported here"
    out, i = [], 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        out.append(esc(cps[i]) if i == j else f"{esc(cps[i])}-{esc(cps[j])}")
        i = j + 1
    return "[" + "".join(out) + "]"


def _ignorecase_class(ch: str) -> str:
    """``[sSſ]``: the characters Python's ``regex`` matches for ``ch`` under IGNORECASE."""
    if not ch.isalpha():
        return ch
    import regex

    pat = regex.compile(regex.escape(ch), regex.IGNORECASE)
    # Case-insensitive matches of a Latin letter lie in a few small blocks; test them all.
    cands = [chr(c) for c in list(range(0x80)) + list(range(0x80, 0x250)) + list(range(0x1E00, 0x2200))]
    return "[" + "".join(c for c in cands if pat.fullmatch(c)) + "]"


def _split_pattern() -> str:
    """CLIP's regex without the IGNORECASE flag (inline flags are not portable), as explicit classes."""
    specials = "|".join("".join(_ignorecase_class(c) for c in t) for t in SPECIAL_TOKENS)
    contractions = "|".join("'" + "".join(_ignorecase_class(c) for c in t)
                            for t in ("s", "t", "re", "ve", "m", "ll", "d"))
    # Under IGNORECASE U+0345 (which case-folds to a letter) matches neither [\p{L}] nor [^\s\p{L}\p{N}];
    # excluding it here makes it a separator that Split drops, as open_clip does.
    return f"{specials}|{contractions}|[\\p{{L}}]+|[\\p{{N}}]|[^\\s\\p{{L}}\\p{{N}}\\u0345]+"


def _hex_pattern(n: int) -> str:
    return "".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in f"{n:x}")


def _numeric_alternatives(n: int, ftfy: bool) -> List[str]:
    """Regex alternatives (after ``&``) for every numeric reference to ``n``.

    ``html.unescape``: any number of leading zeros, decimal or ``x``/``X`` hex in any case, ``;``
    optional (then the digits must end there). ftfy: the ``;`` is required and at most 24
    characters may follow the ``#`` (``&#?[0-9A-Za-z]{1,24};``).
    """
    dec, hx = str(n), _hex_pattern(n)
    if ftfy:
        return [f"#0{{0,{24 - len(dec)}}}{dec};", f"#[xX]0{{0,{23 - len(f'{n:x}')}}}{hx};"]
    return [f"#0*{dec}(?:;|(?![0-9]))", f"#[xX]0*{hx}(?:;|(?![0-9a-fA-F]))"]


def _numeric_codepoints() -> List[int]:
    cps = {n for r in NUMERIC_REFS for n in r} | set(html.entities.name2codepoint.values())
    return sorted(cps)


def _ftfy_fixes(text: str) -> str:
    """ftfy's fixes after ``unescape_html`` in one ``fix_and_explain`` round, without ``fix_encoding``."""
    from ftfy import fixes

    for fix in (fixes.fix_c1_controls, fixes.fix_latin_ligatures, fixes.fix_character_width,
                fixes.uncurl_quotes, fixes.fix_line_breaks, fixes.fix_surrogates,
                fixes.remove_terminal_escapes, fixes.remove_control_chars):
        text = fix(text)
    return unicodedata.normalize("NFC", text)


def _canonical(text: str, lowercase: bool) -> str:
    """What a decoded entity may be replaced by: the same tokens come out in the end."""
    if text and all(c.isspace() for c in text):
        return " "                       # collapsed by whitespace_clean later
    if lowercase and "\u03a3" not in text:
        return text.lower()              # lower-cased later anyway (final sigma needs context)
    return text


_TEMPLATE_CHARS = "$\\"   # swift-transformers passes a Regex Replace's content to ICU as a template


def _group_steps(groups: dict) -> List[dict]:
    """One regex per output: ``&(?:alt|alt|...)`` -> output, in output order (deterministic).

    An output with a template character (``$``, ``\\``) gets plain string replacements of its
    usual spellings instead (its other spellings are then not decoded).
    """
    steps = []
    for out, alts in sorted(groups.items()):
        if not any(c in out for c in _TEMPLATE_CHARS):
            steps.append(_regex("&(?:" + "|".join(alts) + ")", out))
            continue
        n = ord(out) if len(out) == 1 else None
        names = [a for a in alts if a.endswith(";") and a[:-1].isalnum()]
        forms = {"&" + a for a in names}
        if n is not None:
            forms |= {f"&#{n};", f"&#{n:03d};", f"&#x{n:x};", f"&#x{n:X};", f"&#X{n:x};", f"&#X{n:X};"}
        steps += [_string(f, out) for f in sorted(forms)]
    return steps


def _html_groups(lowercase: bool):
    """``html.unescape`` as regex replacements, one per output; returns (the '&' group, the others).

    Covered: every numeric reference to :func:`_numeric_codepoints` and every HTML5 name whose
    character one of those is. A name without ``;`` (legacy, e.g. ``&copy``) is decoded by
    ``html.unescape`` as the longest such prefix unless the whole name is known: its
    alternative carries a look-ahead that excludes the longer names it begins.
    """
    html5 = html.entities.html5
    groups: dict = {}
    covered = set()
    for n in _numeric_codepoints():
        out = _canonical(html.unescape(f"&#{n};"), lowercase)
        covered.add(out)
        groups.setdefault(out, [[], []])[1] += _numeric_alternatives(n, ftfy=False)
    for name in sorted(html5):
        out = _canonical(html5[name], lowercase)
        if out not in covered:
            continue
        if name.endswith(";"):
            groups[out][0].insert(0, name)
        else:
            longer = sorted(k[len(name):-1] for k in html5 if k.startswith(name) and k != name + ";")
            guard = f"(?!(?:{'|'.join(longer)});)" if longer else ""
            groups[out][0].append(name + guard)
    merged = {out: names + nums for out, (names, nums) in groups.items()}
    amp = merged.pop("&")
    return _group_steps({"&": amp}), _group_steps(merged)


def _ftfy_entity_groups() -> List[dict]:
    """Entities ftfy decodes (no '<' on the line) whose text its later fixes change, e.g. ``&rsquo;``
    -> ``'``; the others give the same text when the html.unescape passes decode them. (Outputs are
    not lower-cased here: entity names after them are still case-sensitive.)"""
    from ftfy.fixes import unescape_html

    groups: dict = {}
    for name, char in sorted(html.entities.html5.items()):
        if name.endswith(";") and len(name) <= 25:
            fixed = _ftfy_fixes(unescape_html("&" + name))
            if fixed != char:
                groups.setdefault(_canonical(fixed, False), []).append(name)
    for n in _numeric_codepoints():
        fixed = _ftfy_fixes(unescape_html(f"&#{n};"))
        if fixed != html.unescape(f"&#{n};"):
            groups.setdefault(_canonical(fixed, False), []).extend(_numeric_alternatives(n, ftfy=True))
    return _group_steps(groups)


def normalizer_steps(lowercase: bool = True) -> List[dict]:
    """The normalizer ``Sequence`` that stands in for open_clip's ``_clean_lower`` (or ``_clean_whitespace``)."""
    from ftfy.chardata import CONTROL_CHARS, LIGATURES, WIDTH_MAP

    steps: List[dict] = []
    # --- ftfy.fix_text, one round of fix_and_explain ---------------------------------------------
    # ftfy unescapes HTML only in a line without '<' that follows no line with '<': mark the other '&'.
    steps.append(_regex(f"(?<=<[\\s\\S]{{0,{LOOKBEHIND}}})&|&(?=[^\\n]*<)", AMP_MARK))
    # ftfy repeats its fixes until the text is stable: a chain of '&amp;' unescapes to one '&'.
    steps.append(_regex("&(?:amp;|AMP;|#0{0,22}38;|#[xX]0{0,21}26;)+", "&"))
    steps += _ftfy_entity_groups()
    # fix_encoding: a heuristic, not expressible (see the module docstring).
    c1 = {}
    for b in range(0x80, 0xA0):
        out = bytes([b]).decode("sloppy-windows-1252")
        if out != chr(b):
            c1[chr(b)] = out
    steps += [_string(k, v) for k, v in sorted(c1.items())]
    steps += [_string(chr(k), v) for k, v in sorted(LIGATURES.items())]
    steps += [_string(chr(k), v) for k, v in sorted(WIDTH_MAP.items())]
    steps.append(_regex("[\u02bc\u2018-\u201b]", "'"))      # ftfy.chardata.SINGLE_QUOTE_RE
    steps.append(_regex("[\u201c-\u201f]", '"'))            # DOUBLE_QUOTE_RE
    # fix_line_breaks only rewrites whitespace; fix_surrogates cannot apply to Rust strings.
    steps.append(_regex("\\x1b\\[(?:\\p{Nd}|;)*[a-zA-Z]", ""))   # ANSI_RE (Python's \d is \p{Nd})
    steps.append(_regex(_char_class(CONTROL_CHARS), ""))
    steps.append({"type": "NFC"})
    steps.append(_string(AMP_MARK, "&"))
    # --- html.unescape(html.unescape(.)): the '&'-producers first, so that '&amp;lt;' becomes '<' as
    # in two passes, and once more at the end for '&amp;amp;' -> '&'.
    amp, rest = _html_groups(lowercase)
    steps += amp + rest + amp
    # --- whitespace_clean + strip ----------------------------------------------------------------
    steps.append(_regex(_char_class(c for c in range(0x10000) if chr(c).isspace()) + "+", " "))
    steps.append({"type": "Strip", "strip_left": True, "strip_right": True})
    if lowercase:
        # Python's str.lower() maps a final capital sigma to 'ς'; Rust lower-cases per character.
        # (Python: skipping case-ignorable characters, the one before is cased and the one after is not.)
        steps.append(_regex("(?<=[^\\P{Cased}\\p{Case_Ignorable}]\\p{Case_Ignorable}{0,15})\u03a3"
                            "(?=\\p{Case_Ignorable}*(?:[^\\p{Case_Ignorable}\\p{Cased}]|(?![\\s\\S])))", "\u03c2"))
        steps.append({"type": "Lowercase"})
    return steps


def tokenizer_json(vocab_file: Union[str, Path], context_length: int, pad_id: int = 0,
                   lowercase: bool = True) -> dict:
    """The complete ``tokenizer.json`` of CLIP's BPE for ``context_length`` (see the module docstring)."""
    if not isinstance(context_length, int) or isinstance(context_length, bool) or context_length < 2:
        raise TokenizerError(f"context length must be an integer >= 2 (room for the start and end tokens), "
                             f"got {context_length!r}")
    merges = read_merges(vocab_file)
    vocab = clip_vocab(merges)
    if not 0 <= int(pad_id) < len(vocab):
        raise TokenizerError(f"pad id {pad_id!r} is outside the vocabulary (0..{len(vocab) - 1})")
    ids = {tok: i for i, tok in enumerate(vocab)}
    sot, eot = SPECIAL_TOKENS

    def special(tok):
        return {"id": ids[tok], "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": True, "special": True}

    def tmpl(*parts):
        out = []
        for p in parts:
            name, type_id = (p.split(":") + ["0"])[:2]
            key = "Sequence" if name in ("$A", "$B") else "SpecialToken"
            out.append({key: {"id": name[1:] if key == "Sequence" else name, "type_id": int(type_id)}})
        return out

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": context_length, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": context_length}, "direction": "Right", "pad_to_multiple_of": None,
                    "pad_id": int(pad_id), "pad_type_id": 0, "pad_token": vocab[int(pad_id)]},
        "added_tokens": [special(sot), special(eot)],
        "normalizer": {"type": "Sequence", "normalizers": normalizer_steps(lowercase)},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": _split_pattern()}, "behavior": "Removed", "invert": True},
            byte_level]},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": "</w>", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": ids, "merges": [f"{a} {b}" for a, b in merges]},
        "post_processor": {"type": "TemplateProcessing",
                           "single": tmpl(sot, "$A", eot),
                           "pair": tmpl(sot, "$A", eot, "$B:1", f"{eot}:1"),
                           "special_tokens": {t: {"id": t, "ids": [ids[t]], "tokens": [t]} for t in (sot, eot)}},
        "decoder": {"type": "Sequence", "decoders": [
            byte_level,
            {"type": "Replace", "pattern": {"String": "</w>"}, "content": " "},
            {"type": "Strip", "content": " ", "start": 0, "stop": 1}]},
    }


def dumps(content: dict) -> bytes:
    """Canonical bytes: sorted keys, compact separators, UTF-8, a final newline."""
    return (json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            + "\n").encode("utf-8")


def write_tokenizer_json(vocab_file: Union[str, Path], context_length: int, path: Union[str, Path],
                         pad_id: int = 0, lowercase: bool = True) -> Path:
    """Write :func:`tokenizer_json` to ``path`` (same inputs, same bytes); returns ``path``."""
    path = Path(path)
    data = dumps(tokenizer_json(vocab_file, context_length, pad_id, lowercase))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path
