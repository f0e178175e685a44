"""Zero-shot prompt templates: the default, and the check every template passes where it enters (PyTorch
evaluation and the torch-free runtime alike)."""
from __future__ import annotations

from typing import Iterable, Optional

from .errors import RuntimeInputError

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def check_templates(templates: Optional[Iterable[str]]) -> list:
    """The prompt templates as a list, each checked to take exactly one label.

    A template holds one ``{}`` (or ``{0}``, possibly repeated) where the label goes; literal
    braces are written ``{{`` and ``}}``. Anything ``str.format`` would reject or misuse —
    ``{x}``, two ``{}``, a lone ``{`` — is a :class:`RuntimeInputError` naming the template.
    """
    import string

    if isinstance(templates, (str, bytes)):
        raise RuntimeInputError(f"templates must be a list of strings, got one string {templates!r}; "
                                f"wrap it in a list: [{templates!r}]")
    templates = list(DEFAULT_TEMPLATES if templates is None else templates)
    if not templates:
        raise RuntimeInputError("the template list is empty; give at least one template such as 'a photo of a {}.'")
    hint = "the label goes in '{}' (write '{{' and '}}' for literal braces)"
    for i, t in enumerate(templates):
        name = f"template {t!r}" if len(templates) == 1 else f"template {i + 1} of {len(templates)}, {t!r},"
        if not isinstance(t, str):
            raise RuntimeInputError(f"{name} is a {type(t).__name__}, not a string")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
        except ValueError as e:  # a lone '{' or '}'
            raise RuntimeInputError(f"{name} has unbalanced braces ({e}); {hint}") from None
        if not fields:
            raise RuntimeInputError(f"every template needs '{{}}' where the label goes; {name} has none")
        named = [f for f in fields if f not in ("", "0")]
        if named:
            raise RuntimeInputError(f"{name} has the field '{{{named[0]}}}'; {hint}")
        if fields.count("") > 1:
            raise RuntimeInputError(f"{name} has {fields.count('')} '{{}}' fields; use exactly one for the label")
        try:
            t.format("label")
        except (ValueError, IndexError, KeyError, TypeError) as e:  # e.g. '{:d}', '{}' mixed with '{0}'
            raise RuntimeInputError(f"{name} cannot take a label ({type(e).__name__}: {e}); {hint}") from None
    return templates
