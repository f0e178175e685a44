"""The hard tokenizer corpus shared by tests/test_runtime.py, tests/test_hf_tokenizer.py and tests/test_web.py:
punctuation, unicode, CJK, emoji, HTML entities, mixed case, whitespace, empty and over-long text; the rules of
ftfy/html.unescape/str.lower the portable tokenizer.json claims to reproduce (EXTRA), a seeded fuzz of the hard
fragments, and which differences from open_clip the JSON's documented gaps explain."""
import random
import re

CORPUS = [
    "a photo of a cat", "A PHOTO OF A CAT!!!", "   lots   of\twhitespace \n here ",
    "don't stop: it's 3.14 o'clock; (really) [sic] {x} -- ...?!", "naïve café — déjà vu, Zürich",
    "emoji 🐶🚗🏳️‍🌈 and unicode ✓ ☃ ½", "&amp;lt;b&amp;gt; &quot;quoted&quot; &#39;x&#39; &copy;",
    "<p> &amp;lt;b&amp;gt; x &amp;amp; y</p>",   # a '<' keeps ftfy from unescaping: the double unescape counts
    "東京タワー 北京 서울 こんにちは", "MiXeD CaSe CamelCaseWords", "mojibake cafÃ© and ﬁ ligature",
    "Ｆｕｌｌｗｉｄｔｈ　ｓｐａｃｅ", "zero\u200bwidth and\u00a0nbsp", "<start_of_text> x <END_OF_TEXT>",
    "1,000,000 and 2024-01-01", "", "word " * 100, "supercalifragilisticexpialidocious" * 8,
]

# What the JSON's normalizer cannot do (module docstring of hf_tokenizer): ftfy's mojibake repair.
JSON_GAPS = {"mojibake cafÃ© and ﬁ ligature"}

# Each of ftfy's / html.unescape's / str.lower's rules the normalizer claims to reproduce.
EXTRA = [
    "it’s “quoted” ‘single’ ‚low‛ „double‟ ʼn ŉ",                          # uncurl_quotes, ligature ŉ
    "it&rsquo;s &ldquo;smart&rdquo; &#8217; &#x2019; &#146; &#0146; &lsquo;",  # decoded then uncurled
    "<b>it&rsquo;s</b> &ldquo;stays curly&rdquo; &#8217;",                  # a '<' line: html.unescape only
    "one &rsquo; &amp;amp;lt;\n<b> two &rsquo;\nthree &rsquo; &amp;amp;amp;lt;",   # the '<' rule is sticky
    "&amp;amp;amp;lt; deep &amp;amp;quot; &AMP;amp; &#38;amp;",              # ftfy loops until stable
    "<i> &amp;amp;amp;lt; &amp;amp;lt; &#38;#38;lt;",                      # exactly two passes
    "&copy &copy; &notit; &not; &notin; &lt3 &gt= &amp &ampx &eacute &Eacute;",   # legacy names
    "&#39; &#039; &#0039; &#x27; &#X27; &#x00027; &#39 &#39x &#x27x &apos; &#65;&#97;&#x6A;",
    "&nbsp;&#160;&#xa0; &ensp;&emsp;&thinsp; &#8203; &#xFEFF;bom &hellip; &mdash;&#8211;",
    "&#0; &#1; &#128; &#x80; &#x9F; &#13;&#10;x &#9; &#127;",
    "ＡＢＣ ｄｅｆ １２３ ！？ ｶﾞｷﾞ ﾊﾟ ￥ 　space",                            # fix_character_width + NFC
    "ﬁﬂﬀﬃﬄﬅﬆ Ĳĳ ǅǆ Ǳǳ",                                                   # fix_latin_ligatures
    "\x1b[1;31mred\x1b[0m \x00nul\x07bell\x7f \u206a \ufff9 \x0bvt",           # escapes, control chars
    "e\u0301 A\u030a \u212b \u2126 \u212a",                                  # NFC
    "ΟΔΟΣ ΣΟΦΙΑΣ. Σ ΑΣ'Α ΑʰΣ ΣΣ ΟΔΟΣ\u0345—",                                # final sigma
    "IT'S IT'ſ it'ſ 'S 'RE 'LL",                                              # IGNORECASE contractions
    "a\u0345b \u0345 ᾳ \u0399\u0345",                                         # U+0345
    "sep\x1carated\x1d\x1e\x1f and \u2028 \u2029 \u3000 \xa0 \u202f \x85",    # whitespace sets
    "&lt;start_of_text&gt; a <start_of_text> b c <end_of_text> d",
    "İstanbul ǅ ß ẞ ΐ",                                                       # str.lower
    "tab\tnew\nline\r\nreturn\rcr",
    "$5 &dollar; &#36; \\ &bsol; &#92; &#x5C;",                               # template characters
    "x" * 300, "&amp;" * 50, "’" * 30,
]


FUZZ_FRAGMENTS = ["a", "B", "cat", " ", "  ", "\t", "\n", "'", "’", "“", "'s", "'S", "&", "&amp;", "&amp;amp;", "&lt;",
                  "<", ">", "&quot;", "&#39;", "&#x27;", "&rsquo;", "&nbsp;", "&copy", "&eacute;", "&#8217;", "&#146;",
                  "&not", "&notit;", "&lt", "ＡＢＣ", "１２３", "　", "ｶﾞ", "ﬁ", "Ĳ", "\x85", "\x93", "\x1b[31m", "\x00",
                  "\x1c", "\ufeff", "\u200b", "é", "e\u0301", "Å", "ΟΔΟΣ", "Σ", "ſ", "'ſ", "\u0345", "東京", "🐶",
                  "½", "3.14", " <start_of_text> ", " <end_of_text> ", "!", "?!", "İ", "ß", "ǅ", "&#38;", "&#38;lt;",
                  "&#0;", "&#65;", "&#X41;", "&dollar;", "&bsol;", "$", "\\"]


def fuzz_texts(n: int = 800, seed: int = 0) -> list:
    """Random mixes of the hard fragments (1-10 each)."""
    rng = random.Random(seed)
    return ["".join(rng.choice(FUZZ_FRAGMENTS) for _ in range(rng.randint(1, 10))) for _ in range(n)]


def gap_explained(t: str) -> bool:
    """Whether a difference between the JSON tokenizer's ids and open_clip's on ``t`` is one of the gaps the
    docstring of mobileclip/runtime/tokenizer_json.py names: ftfy's mojibake heuristics, or a numeric reference to a
    code point outside the covered ones."""
    import ftfy

    from mobileclip.runtime import tokenizer_json as TJ

    if ftfy.fix_text(t) != ftfy.fix_text(t, fix_encoding=False):
        return True                                   # mojibake heuristics
    covered = set(TJ._numeric_codepoints())
    for m in re.finditer(r"&#([xX][0-9a-fA-F]+|[0-9]+)", ftfy.fix_text(t, fix_encoding=False)):
        g = m.group(1)
        if (int(g[1:], 16) if g[0] in "xX" else int(g)) not in covered:
            return True                               # a reference (e.g. built by '&#106' + '１２３') not covered
    return False
