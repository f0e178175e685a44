"""What the README tells users to import exists."""
import importlib
import re
from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


def _resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_import_and_name_in_the_readme_resolves():
    names = set()
    for module, items in re.findall(r"from (mobileclip[\w.]*) import ([\w, ]+)", README):
        names |= {f"{module}.{n.strip()}" for n in items.split(",") if n.strip()}
    names |= set(re.findall(r"`(mobileclip(?:\.\w+)+)", README))                # `mobileclip.distill.LOSSES`
    names |= {m.rstrip("(") for m in re.findall(r"\b(mobileclip\.\w+)\(", README)}  # mobileclip.create_model(
    assert len(names) > 15
    missing = []
    for n in sorted(names):
        try:
            _resolve(n)
        except (AttributeError, ModuleNotFoundError):
            missing.append(n)
    assert not missing, f"named in the README but not importable: {missing}"
