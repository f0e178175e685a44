"""The hard tokenizer corpus shared by tests/test_runtime.py and tests/test_hf_tokenizer.py: punctuation,
unicode, CJK, emoji, HTML entities, mixed case, whitespace, empty and over-long text."""

CORPUS = [
    "a photo of a cat", "A PHOTO OF A CAT!!!", "   lots   of\twhitespace \n here ",
    "don't stop: it's 3.14 o'clock; (really) [sic] {x} -- ...?!", "naïve café — déjà vu, Zürich",
    "emoji 🐶🚗🏳️‍🌈 and unicode ✓ ☃ ½", "&amp;lt;b&amp;gt; &quot;quoted&quot; &#39;x&#39; &copy;",
    "<p> &amp;lt;b&amp;gt; x &amp;amp; y</p>",   # a '<' keeps ftfy from unescaping: the double unescape counts
    "東京タワー 北京 서울 こんにちは", "MiXeD CaSe CamelCaseWords", "mojibake cafÃ© and ﬁ ligature",
    "Ｆｕｌｌｗｉｄｔｈ　ｓｐａｃｅ", "zero\u200bwidth and\u00a0nbsp", "<start_of_text> x <END_OF_TEXT>",
    "1,000,000 and 2024-01-01", "", "word " * 100, "supercalifragilisticexpialidocious" * 8,
]
